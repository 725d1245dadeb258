//! [`BreakerRegistry`]: named breakers made on first use, from a default
//! configuration or one set for the name, and listed for a dashboard.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

use crate::backend::StateBackend;

use super::config::BreakerConfig;
use super::distributed::DistributedBreaker;
use super::local::LocalBreaker;

type Make<B> = dyn Fn(&str, BreakerConfig) -> B + Send + Sync;

/// Breakers by name: [`get`](Self::get) returns the one of that name,
/// making it on first use; every handle to a name is the same breaker.
///
/// ```
/// use std::time::Duration;
/// use statecraft::breaker::{BreakerConfig, BreakerRegistry, Phase};
///
/// let registry = BreakerRegistry::local(BreakerConfig::builder().consecutive_failures(5).build()?);
/// registry.configure("payments", BreakerConfig::builder().consecutive_failures(1).build()?);
/// registry.get("payments").acquire().expect("closed").failure();
/// assert_eq!(registry.get("payments").phase(), Phase::Open);
/// registry.get("search").acquire().expect("closed").failure();
/// let phases: Vec<_> = registry.all().into_iter().map(|(name, b)| (name, b.phase())).collect();
/// assert_eq!(phases, [("payments".to_string(), Phase::Open), ("search".to_string(), Phase::Closed)]);
/// # Ok::<(), statecraft::Error>(())
/// ```
pub struct BreakerRegistry<B = LocalBreaker> {
    default: BreakerConfig,
    configs: RwLock<HashMap<String, BreakerConfig>>,
    breakers: RwLock<BTreeMap<String, B>>,
    make: Arc<Make<B>>,
}

impl<B: Clone> fmt::Debug for BreakerRegistry<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerRegistry")
            .field("breakers", &self.len())
            .finish_non_exhaustive()
    }
}

impl BreakerRegistry<LocalBreaker> {
    /// Local breakers, made with `default` unless configured by name.
    pub fn local(default: BreakerConfig) -> Self {
        Self::new(default, |name, config| LocalBreaker::new(name, config))
    }
}

impl BreakerRegistry<DistributedBreaker> {
    /// Breakers shared through `store` (each named `name` there, as
    /// [`DistributedBreaker::new`] names it).
    pub fn distributed(store: Arc<dyn StateBackend>, default: BreakerConfig) -> Self {
        Self::new(default, move |name, config| {
            DistributedBreaker::new(store.clone(), name, config)
        })
    }
}

impl<B: Clone> BreakerRegistry<B> {
    /// Breakers made by `make(name, config)`.
    pub fn new(
        default: BreakerConfig,
        make: impl Fn(&str, BreakerConfig) -> B + Send + Sync + 'static,
    ) -> Self {
        BreakerRegistry {
            default,
            configs: RwLock::default(),
            breakers: RwLock::default(),
            make: Arc::new(make),
        }
    }

    /// The configuration `name` is made with, if it is not made yet.
    /// Returns whether it will apply (`false`: the breaker exists already
    /// and keeps its configuration).
    pub fn configure(&self, name: impl Into<String>, config: BreakerConfig) -> bool {
        let name = name.into();
        // Under the breakers' lock, so that no `get` makes it meanwhile.
        let breakers = self.breakers.read().unwrap_or_else(PoisonError::into_inner);
        if breakers.contains_key(&name) {
            return false;
        }
        self.configs
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name, config);
        true
    }

    /// The breaker `name`, made now if it is new.
    pub fn get(&self, name: &str) -> B {
        if let Some(breaker) = self.get_existing(name) {
            return breaker;
        }
        let mut breakers = self
            .breakers
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(breaker) = breakers.get(name) {
            return breaker.clone();
        }
        let config = self
            .configs
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
            .unwrap_or_else(|| self.default.clone());
        let breaker = (self.make)(name, config);
        breakers.insert(name.to_string(), breaker.clone());
        breaker
    }

    /// The breaker `name` if it has been made.
    pub fn get_existing(&self, name: &str) -> Option<B> {
        self.breakers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    /// Every breaker made so far, by name.
    pub fn all(&self) -> Vec<(String, B)> {
        self.breakers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(name, breaker)| (name.clone(), breaker.clone()))
            .collect()
    }

    /// How many breakers have been made.
    pub fn len(&self) -> usize {
        self.breakers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether none has been made.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::breaker::Phase;

    fn config(failures: u32) -> BreakerConfig {
        BreakerConfig::builder()
            .consecutive_failures(failures)
            .build()
            .expect("config")
    }

    #[test]
    fn one_name_is_one_breaker_across_threads() {
        let registry = Arc::new(BreakerRegistry::local(config(100)));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let registry = registry.clone();
                std::thread::spawn(move || {
                    for _ in 0..25 {
                        registry.get("shared").acquire().expect("closed").failure();
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.join().expect("no panic");
        }
        assert_eq!(registry.len(), 1);
        assert_eq!(
            registry.get("shared").phase(),
            Phase::Open,
            "100 failures on one breaker"
        );
    }

    #[test]
    fn a_name_configured_before_use_gets_its_configuration() {
        let registry = BreakerRegistry::local(config(3));
        assert!(registry.configure("strict", config(1)));
        registry.get("strict").acquire().expect("closed").failure();
        registry.get("lenient").acquire().expect("closed").failure();
        assert_eq!(registry.get("strict").phase(), Phase::Open);
        assert_eq!(registry.get("lenient").phase(), Phase::Closed);
        assert!(!registry.configure("lenient", config(1)), "made already");
        registry.get("lenient").acquire().expect("closed").failure();
        assert_eq!(registry.get("lenient").phase(), Phase::Closed);
        let names: Vec<String> = registry.all().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["lenient", "strict"]);
        assert!(registry.get_existing("other").is_none());
    }
}
