//! Reminders come due: the node delivers them.
//!
//! A grain's events set reminders (`Grain::reminders`), stored with the
//! events in one transaction. Every node looks for due ones every 200 ms,
//! and delivers those whose grain's directory partition it holds, so each
//! reminder has one deliverer per view, whichever member hosts the grain:
//! delivering is a grain call, placed and forwarded like any other. The
//! reminder is removed once the grain has taken its command (done or
//! refused). A call that did not run (the grain being placed, a member
//! fenced) is tried again at the next look; one whose outcome is unknown,
//! or a look around a view change, may deliver twice — the command then
//! carries the idempotency key `reminder:<id>:<due>`, so it takes effect
//! once.

use std::cell::RefCell;
use std::collections::HashSet;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use granary_grain::{CallError, CallOptions};
use granary_store::{DueReminder, EventStore};

use crate::grains::Grains;

/// How often a node looks for due reminders.
const LOOK_EVERY: Duration = Duration::from_millis(200);
/// Most reminders one look takes.
const BATCH: usize = 512;

/// Milliseconds since the Unix epoch.
pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Delivers due reminders for ever (run it on the node's actix system):
/// those for which `delivers(kind/id)` holds; `fired()` after each one its
/// grain took (or refused).
pub async fn deliver(
    store: Arc<dyn EventStore>,
    grains: Grains,
    delivers: impl Fn(&str) -> bool + 'static,
    fired: impl Fn() + 'static,
) {
    let fired = Rc::new(fired);
    let in_flight: Rc<RefCell<HashSet<(String, String)>>> = Rc::default();
    loop {
        actix_rt::time::sleep(LOOK_EVERY).await;
        let due = match store.due_reminders(now_unix_ms(), BATCH).await {
            Ok(due) => due,
            Err(err) => {
                tracing::debug!(error = %err, "cannot look for due reminders");
                continue;
            }
        };
        for due in due {
            let key = granary_grain::grain_key(&due.key.kind, &due.key.id);
            let mark = (key.clone(), due.reminder.id.clone());
            if !grains.hosts(&due.key.kind)
                || !delivers(&key)
                || !in_flight.borrow_mut().insert(mark.clone())
            {
                continue;
            }
            let (store, grains, in_flight) = (store.clone(), grains.clone(), in_flight.clone());
            let fired = fired.clone();
            actix_rt::spawn(async move {
                if deliver_one(&store, &grains, due).await {
                    fired();
                }
                in_flight.borrow_mut().remove(&mark);
            });
        }
    }
}

/// Delivers one reminder: its grain takes the command once. Whether it
/// was taken (or refused by the grain, or dropped as undeliverable).
async fn deliver_one(store: &Arc<dyn EventStore>, grains: &Grains, due: DueReminder) -> bool {
    let DueReminder { key, reminder } = due;
    let options = CallOptions {
        idempotency: Some((
            format!("reminder:{}:{}", reminder.id, reminder.due),
            fnv1a(&reminder.payload),
        )),
        ..CallOptions::default()
    };
    let delivered = grains
        .call_encoded(&key.kind, &key.id, reminder.payload.clone(), options)
        .await;
    let taken = match &delivered {
        // Done, refused by the grain, or already done under this key.
        Ok(_) | Err(CallError::Rejected(_)) | Err(CallError::IdempotencyKeyReused { .. }) => true,
        // A command that can never run (it does not decode) is dropped.
        Err(CallError::Invalid(why)) => {
            tracing::warn!(grain = %key, reminder = %reminder.id, %why, "reminder dropped");
            true
        }
        Err(_) => false,
    };
    if !taken {
        tracing::debug!(grain = %key, reminder = %reminder.id, ?delivered, "reminder not delivered yet");
        return false;
    }
    tracing::debug!(grain = %key, reminder = %reminder.id, "reminder delivered");
    if let Err(err) = store
        .finish_reminder(&key, &reminder.id, reminder.due)
        .await
    {
        // Delivered again at the next look; its key makes that harmless.
        tracing::debug!(grain = %key, error = %err, "reminder delivered but not finished");
    }
    true
}

/// FNV-1a, 64 bit (stable across builds: the hash is stored with the
/// idempotency record).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}
