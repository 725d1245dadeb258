//! [`AtomicUpdate`]s on the memory backend: applied under the key's shard
//! lock, at the backend's clock, so no compare-and-swap loop is needed.

use bytes::Bytes;

use crate::backend::atomic::{AtomicUpdate, AtomicWrite};
use crate::backend::clock::Clock;
use crate::backend::error::{Error, Operation, Result};

use super::{Entry, Inner, NAME};

impl Inner {
    pub(super) fn update_atomic(
        &self,
        key: &[u8],
        update: &dyn AtomicUpdate,
        input: &[u8],
    ) -> Result<Bytes> {
        self.limits.check_key(NAME, Operation::UpdateAtomic, key)?;
        let clock: &dyn Clock = &*self.clock;
        let context = |err: Error| err.with_key(key).context(NAME, Operation::UpdateAtomic);
        let slot = self.map.entry(key.into());
        let current = match &slot {
            dashmap::Entry::Occupied(entry) if entry.get().is_live(clock) => {
                Some(entry.get().value.clone())
            }
            _ => None,
        };
        let step = update
            .apply(current.as_deref(), input, clock.now_micros())
            .map_err(context)?;
        match step.write {
            AtomicWrite::Keep => {
                if current.is_none() {
                    // An expired entry the read found: drop it now.
                    if let dashmap::Entry::Occupied(entry) = slot {
                        entry.remove();
                    }
                }
            }
            AtomicWrite::Put { value, options } => {
                self.limits
                    .check_entry(NAME, Operation::UpdateAtomic, key, &value)?;
                let entry = Entry {
                    value,
                    expires_at: self.expiry(options),
                };
                match slot {
                    dashmap::Entry::Occupied(mut occupied) => {
                        occupied.insert(entry);
                    }
                    dashmap::Entry::Vacant(vacant) => {
                        vacant.insert(entry);
                    }
                }
            }
            AtomicWrite::Delete => {
                if let dashmap::Entry::Occupied(entry) = slot {
                    entry.remove();
                }
            }
        }
        Ok(step.output)
    }
}
