//! Reload: re-read the config file, compile it, swap the policy in whole.
//! On any error the running policy stays.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use crate::config::{Config, ConfigError};
use crate::control::ControlPlane;
use crate::policy::{CompileError, Policy};

/// A reload that changed nothing: the running config stays.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReloadError {
    /// The proxy was started without a config file.
    #[error("the proxy was not started from a config file; nothing to reload")]
    NoConfigFile,
    /// The file could not be read or parsed.
    #[error("reload failed, running config kept: {0}")]
    Config(#[from] ConfigError),
    /// The new config does not compile.
    #[error("reload failed, running config kept: {0}")]
    Compile(#[from] CompileError),
}

/// A reload that swapped in a new policy.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Reloaded {
    /// The file that was read.
    pub path: PathBuf,
    /// How many routes the new policy has.
    pub routes: usize,
    /// Sections that changed but need a restart to apply.
    pub needs_restart: Vec<&'static str>,
}

impl fmt::Display for Reloaded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "reloaded {}: {} routes",
            self.path.display(),
            self.routes
        )?;
        if !self.needs_restart.is_empty() {
            write!(
                f,
                "; changes to {} need a restart and were not applied",
                self.needs_restart.join(", ")
            )?;
        }
        Ok(())
    }
}

impl ControlPlane {
    /// Re-reads the config file and swaps in its policy, reusing the slots
    /// of unchanged tokens. Logs and counts the outcome.
    pub fn reload(&self) -> Result<Reloaded, ReloadError> {
        let path = self.config_path().ok_or(ReloadError::NoConfigFile)?;
        let result = Config::load(&path)
            .map_err(ReloadError::from)
            .and_then(|cfg| {
                let policy = Policy::compile(&cfg, &self.registry)?;
                Ok((cfg, policy))
            });
        let (cfg, policy) = match result {
            Ok(x) => x,
            Err(e) => {
                crate::ops::metrics::global().reload(false);
                tracing::error!(config = %path.display(), error = %e, "reload failed; keeping the running config");
                return Err(e);
            }
        };
        let needs_restart = needs_restart(&self.started, &cfg);
        let routes = policy.routes.routes().len();
        self.policy.store(Arc::new(policy));
        crate::ops::metrics::global().reload(true);
        if !needs_restart.is_empty() {
            tracing::warn!(config = %path.display(), needs_restart = %needs_restart.join(", "), "reload applied routes, clients and intercept policy; other changes need a restart");
        }
        tracing::info!(config = %path.display(), routes, "config reloaded");
        Ok(Reloaded {
            path,
            routes,
            needs_restart,
        })
    }
}

/// The sections of `new` that differ from `started` and that a reload
/// does not apply.
fn needs_restart(started: &Config, new: &Config) -> Vec<&'static str> {
    let mut restart = Vec::new();
    let s = started;
    if new.proxy.listen != s.proxy.listen
        || new.proxy.admin != s.proxy.admin
        || new.proxy.workers != s.proxy.workers
    {
        restart.push("[proxy] listen/admin/workers");
    }
    if new.proxy.drain_timeout != s.proxy.drain_timeout
        || new.proxy.shutdown_delay != s.proxy.shutdown_delay
        || new.proxy.watch_config != s.proxy.watch_config
    {
        restart.push("[proxy] drain_timeout/shutdown_delay/watch_config");
    }
    if new.ca != s.ca {
        restart.push("[ca]");
    }
    if new.source != s.source {
        restart.push("[source]");
    }
    if new.upstream != s.upstream {
        restart.push("[upstream]");
    }
    if new.limits != s.limits {
        restart.push("[limits]");
    }
    if new.audit != s.audit {
        restart.push("[audit]");
    }
    if new.metadata != s.metadata {
        restart.push("[metadata]");
    }
    restart
}
