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
    }
}

pub(crate) fn member_from_wire(member: pb::Member, field: &str) -> Result<Member, String> {
    check_text(&member.id, &format!("{field}.id"))?;
    check_text(&member.address, &format!("{field}.address"))?;
    Ok(Member {
        id: NodeId(member.id),
        address: member.address,
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
