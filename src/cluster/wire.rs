//! Core messages ⇄ protobuf. Bad input becomes an error naming the field.

use granary_cluster_core::{
    ClaimAnswer, ClusterConfig, Grant, MAX_MEMBERS, Member, Message, NodeId, Unplaced,
};

use crate::proto::cluster as pb;

pub(crate) fn to_envelope(from: &NodeId, message: &Message) -> pb::Envelope {
    use pb::envelope::Message as M;
    let message = match message {
        Message::Heartbeat {
            term,
            leader,
            config_term,
            config_version,
            committed_version,
            nonce,
            echo,
            silence,
            serving,
        } => M::Heartbeat(pb::Heartbeat {
            term: *term,
            leader: leader.as_ref().map(|l| l.0.clone()).unwrap_or_default(),
            config_term: *config_term,
            config_version: *config_version,
            committed_version: *committed_version,
            nonce: *nonce,
            echo: *echo,
            silence: silence
                .iter()
                .map(|(id, millis)| pb::Silence {
                    id: id.0.clone(),
                    millis: *millis,
                })
                .collect(),
            serving: *serving,
        }),
        Message::RequestVote {
            term,
            config_term,
            config_version,
        } => M::RequestVote(pb::RequestVote {
            term: *term,
            config_term: *config_term,
            config_version: *config_version,
        }),
        Message::Vote { term, granted } => M::Vote(pb::Vote {
            term: *term,
            granted: *granted,
        }),
        Message::ApplyConfig {
            term,
            config,
            committed_version,
        } => M::ApplyConfig(pb::ApplyConfig {
            term: *term,
            config: Some(config_to_wire(config)),
            committed_version: *committed_version,
        }),
        Message::ConfigAck { term, version } => M::ConfigAck(pb::ConfigAck {
            term: *term,
            version: *version,
        }),
        Message::PullConfig => M::PullConfig(pb::PullConfig {}),
    };
    pb::Envelope {
        from: from.0.clone(),
        message: Some(message),
    }
}

pub(crate) fn config_to_wire(config: &ClusterConfig) -> pb::Config {
    pb::Config {
        version: config.version,
        term: config.term,
        members: config.members.values().map(member_to_wire).collect(),
    }
}

pub(crate) fn member_to_wire(member: &Member) -> pb::Member {
    pb::Member {
        id: member.id.0.clone(),
        address: member.address.clone(),
        http: member.http.clone(),
    }
}

pub(crate) fn member_from_wire(member: pb::Member, field: &str) -> Result<Member, String> {
    check_text(&member.id, &format!("{field}.id"))?;
    check_text(&member.address, &format!("{field}.address"))?;
    let dialable = member.http.len() <= 261 && crate::config::valid_http_address(&member.http);
    if !(member.http.is_empty() || dialable) {
        return Err(format!(
            "{field}.http: HOST:PORT in visible ASCII, at most 261 bytes, or empty"
        ));
    }
    Ok(Member {
        id: NodeId(member.id),
        address: member.address,
        http: member.http,
    })
}

fn check_text(value: &str, field: &str) -> Result<(), String> {
    check_printable(value, field, 261)
}

/// `value` has 1..=`most` bytes, all printable, no spaces.
fn check_printable(value: &str, field: &str, most: usize) -> Result<(), String> {
    if value.is_empty()
        || value.len() > most
        || value.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(format!(
            "{field}: 1..={most} printable characters without spaces"
        ));
    }
    Ok(())
}

fn config_from_wire(config: pb::Config) -> Result<ClusterConfig, String> {
    if config.members.len() > MAX_MEMBERS {
        return Err(format!("config.members: at most {MAX_MEMBERS}"));
    }
    let mut members = std::collections::BTreeMap::new();
    for member in config.members {
        let member = member_from_wire(member, "config.members")?;
        members.insert(member.id.clone(), member);
    }
    Ok(ClusterConfig {
        version: config.version,
        term: config.term,
        members,
    })
}

/// The sender and the core message of an envelope.
pub(crate) fn from_envelope(envelope: pb::Envelope) -> Result<(NodeId, Message), String> {
    use pb::envelope::Message as M;
    check_text(&envelope.from, "from")?;
    let message = match envelope.message.ok_or("message: missing")? {
        M::Heartbeat(h) => {
            if h.silence.len() > MAX_MEMBERS {
                return Err(format!("heartbeat.silence: at most {MAX_MEMBERS}"));
            }
            Message::Heartbeat {
                term: h.term,
                leader: (!h.leader.is_empty()).then_some(NodeId(h.leader)),
                config_term: h.config_term,
                config_version: h.config_version,
                committed_version: h.committed_version,
                nonce: h.nonce,
                echo: h.echo,
                silence: h
                    .silence
                    .into_iter()
                    .map(|s| (NodeId(s.id), s.millis))
                    .collect(),
                serving: h.serving,
            }
        }
        M::RequestVote(v) => Message::RequestVote {
            term: v.term,
            config_term: v.config_term,
            config_version: v.config_version,
        },
        M::Vote(v) => Message::Vote {
            term: v.term,
            granted: v.granted,
        },
        M::ApplyConfig(a) => Message::ApplyConfig {
            term: a.term,
            config: config_from_wire(a.config.ok_or("apply_config.config: missing")?)?,
            committed_version: a.committed_version,
        },
        M::ConfigAck(a) => Message::ConfigAck {
            term: a.term,
            version: a.version,
        },
        M::PullConfig(_) => Message::PullConfig,
    };
    Ok((NodeId(envelope.from), message))
}

/// A partition holder's answer to a claim, for the wire.
pub(crate) fn claim_answer_to_wire(answer: &ClaimAnswer) -> pb::ClaimReply {
    use pb::claim_reply::Answer;
    let answer = match answer {
        ClaimAnswer::Granted(grant) => Answer::Granted(grant_to_wire(grant)),
        ClaimAnswer::Owned { owner } => Answer::Owner(owner.0.clone()),
        ClaimAnswer::NotHolder { holder } => Answer::Holder(holder.0.clone()),
        ClaimAnswer::Refused(why) => Answer::Refused(why.to_string()),
    };
    pb::ClaimReply {
        answer: Some(answer),
    }
}

/// A claim's answer from the wire; `None` if it is empty or malformed
/// (treated as no answer).
pub(crate) fn claim_answer_from_wire(reply: pb::ClaimReply) -> Option<ClaimAnswer> {
    use pb::claim_reply::Answer;
    Some(match reply.answer? {
        Answer::Granted(grant) => ClaimAnswer::Granted(grant_from_wire(grant)),
        Answer::Owner(owner) => {
            check_text(&owner, "owner").ok()?;
            ClaimAnswer::Owned {
                owner: NodeId(owner),
            }
        }
        Answer::Holder(holder) => {
            check_text(&holder, "holder").ok()?;
            ClaimAnswer::NotHolder {
                holder: NodeId(holder),
            }
        }
        Answer::Refused(why) => {
            ClaimAnswer::Refused(Unplaced::RefusedByHolder(why.chars().take(200).collect()))
        }
    })
}

/// Checks a node id given in a request.
pub(crate) fn node_id(value: &str, field: &str) -> Result<NodeId, String> {
    check_text(value, field)?;
    Ok(NodeId(value.to_owned()))
}

/// Checks a grain id given in a request: 1..=256 printable characters.
pub(crate) fn grain_id(value: &str, field: &str) -> Result<(), String> {
    check_printable(value, field, 256)
}

pub(crate) fn grant_to_wire(grant: &Grant) -> pb::Grant {
    pb::Grant {
        epoch: grant.epoch,
        id: grant.id,
    }
}

pub(crate) fn grant_from_wire(grant: pb::Grant) -> Grant {
    Grant {
        epoch: grant.epoch,
        id: grant.id,
    }
}

/// A hosted call's result for the wire: the reply, or the runtime's error
/// as it is (its rejection already encoded).
pub(crate) fn grain_answer_to_wire(
    result: crate::grains::WireResult,
) -> crate::proto::grains::GrainAnswer {
    use crate::proto::grains as g;
    use g::grain_error::Error as E;
    use granary_grain::CallError;
    use granary_store::StoreError;
    let result = match result {
        Ok((reply, version)) => g::grain_answer::Result::Ok(g::GrainReply { reply, version }),
        Err(err) => {
            let error = match err {
                CallError::Rejected(bytes) => E::Rejected(bytes),
                CallError::VersionMismatch { expected, actual } => {
                    E::VersionMismatch(g::VersionMismatch { expected, actual })
                }
                CallError::IdempotencyKeyReused { key } => E::IdempotencyKeyReused(key),
                CallError::Store(StoreError::Unavailable(why)) => E::StoreUnavailable(why),
                CallError::Store(StoreError::Indeterminate(why)) => E::OutcomeUnknown(why),
                CallError::Store(StoreError::Fenced { .. }) => {
                    E::NotOwner("a newer owner has written the grain".into())
                }
                CallError::Store(other) => E::StoreFailure(other.to_string()),
                CallError::Panicked(why) => E::Panicked(why),
                CallError::Unavailable(why) => E::Unavailable(why),
                CallError::NotOwner(why) => E::NotOwner(why),
                CallError::Fenced(why) => E::Fenced(why),
                CallError::Placing(why) => E::Placing(why),
                CallError::Invalid(why) => E::Invalid(why),
                CallError::Cycle(chain) => E::Cycle(chain),
                // Only a caller's own view; it never travels.
                CallError::Unreachable(why) => E::Unavailable(why),
            };
            g::grain_answer::Result::Error(g::GrainError { error: Some(error) })
        }
    };
    g::GrainAnswer {
        result: Some(result),
    }
}

/// A forwarded call's answer from the wire (the rejection, if any, still
/// encoded). An empty or unknown answer is `Unavailable`.
pub(crate) fn grain_answer_from_wire(
    answer: crate::proto::grains::GrainAnswer,
) -> crate::grains::WireResult {
    use crate::proto::grains as g;
    use g::grain_error::Error as E;
    use granary_grain::CallError;
    use granary_store::StoreError;
    let empty = || CallError::Unavailable("the owner sent an empty answer".into());
    match answer.result.ok_or_else(empty)? {
        g::grain_answer::Result::Ok(reply) => Ok((reply.reply, reply.version)),
        g::grain_answer::Result::Error(error) => Err(match error.error.ok_or_else(empty)? {
            E::Rejected(bytes) => CallError::Rejected(bytes),
            E::VersionMismatch(m) => CallError::VersionMismatch {
                expected: m.expected,
                actual: m.actual,
            },
            E::IdempotencyKeyReused(key) => CallError::IdempotencyKeyReused { key },
            E::StoreUnavailable(why) => CallError::Store(StoreError::Unavailable(why)),
            E::OutcomeUnknown(why) => CallError::Store(StoreError::Indeterminate(why)),
            E::StoreFailure(why) => CallError::Store(StoreError::Engine(why)),
            E::Panicked(why) => CallError::Panicked(why),
            E::Unavailable(why) => CallError::Unavailable(why),
            E::NotOwner(why) => CallError::NotOwner(why),
            E::Fenced(why) => CallError::Fenced(why),
            E::Placing(why) => CallError::Placing(why),
            E::Invalid(why) => CallError::Invalid(why),
            E::Cycle(chain) => CallError::Cycle(chain),
        }),
    }
}

#[cfg(test)]
mod tests {
    use granary_cart::CartError;
    use granary_grain::CallError;
    use granary_store::StoreError;

    use super::*;

    /// A runtime error crosses the wire as itself: the kind's rejection
    /// (MessagePack) and every runtime variant come back equal.
    #[test]
    fn every_call_error_crosses_the_wire_as_itself() {
        let errors: Vec<CallError<CartError>> = vec![
            CallError::Rejected(CartError::Invalid {
                field: "quantity".into(),
                reason: "must be 1..=999".into(),
            }),
            CallError::Rejected(CartError::CheckedOut { order_id: None }),
            CallError::VersionMismatch {
                expected: 3,
                actual: 4,
            },
            CallError::IdempotencyKeyReused { key: "k".into() },
            CallError::Store(StoreError::Unavailable("down".into())),
            CallError::Store(StoreError::Indeterminate("no answer".into())),
            CallError::Panicked("boom".into()),
            CallError::Unavailable("busy".into()),
            CallError::NotOwner("elsewhere".into()),
            CallError::Fenced("no majority".into()),
            CallError::Placing("rebuilding".into()),
            CallError::Invalid("bad id".into()),
            CallError::Cycle("cart/a → stock/b → cart/a".into()),
        ];
        for error in errors {
            let encoded = error
                .clone()
                .map_rejection(|r| crate::grains::encode(&r).expect("a rejection encodes"));
            let back = grain_answer_from_wire(grain_answer_to_wire(Err(encoded)))
                .expect_err("an error")
                .map_rejection(|bytes| {
                    rmp_serde::from_slice::<CartError>(&bytes).expect("a rejection decodes")
                });
            assert_eq!(back, error);
        }
        let reply = grain_answer_from_wire(grain_answer_to_wire(Ok((vec![1, 2, 3], 7))));
        assert_eq!(reply, Ok((vec![1, 2, 3], 7)));
    }

    #[test]
    fn a_members_http_address_is_empty_or_one_a_client_can_dial() {
        let member = |http: &str| pb::Member {
            id: "n1".into(),
            address: "10.0.0.1:7070".into(),
            http: http.into(),
        };
        for good in ["", "10.0.0.1:8080", "shop-1.internal:80", "[fd00::1]:8080"] {
            let read = member_from_wire(member(good), "member").expect(good);
            assert_eq!(read.http, good);
            assert_eq!(member_to_wire(&read), member(good));
        }
        for bad in ["no-port", "a:0", "http://a:80", "ä:80", "a:80\r\nX: y"] {
            let err = member_from_wire(member(bad), "member").expect_err(bad);
            assert!(err.contains("member.http"), "{bad}: {err}");
        }
        let long = format!("{}:80", "a".repeat(300));
        assert!(member_from_wire(member(&long), "member").is_err());
    }

    #[test]
    fn an_empty_answer_is_unavailable_not_a_panic() {
        let answer = crate::proto::grains::GrainAnswer { result: None };
        assert!(matches!(
            grain_answer_from_wire(answer),
            Err(CallError::Unavailable(_))
        ));
    }
}
