//! `facegate run`: the daemon under a multi-threaded runtime, with SIGTERM /
//! SIGINT as shutdown and SIGHUP as a reload of the validated config file.

use std::path::Path;
use std::process::ExitCode;

use facegate::{config, daemon, heap, logging, shutdown};

/// Runs the daemon with the config at `path` until SIGTERM or SIGINT.
pub fn daemon(path: &Path) -> anyhow::Result<ExitCode> {
    let cfg = config::load(path)?;
    logging::init(&cfg.log)?;
    heap::map_large_buffers();
    // Bounded blocking pool: the unit's TasksMax=64 counts every thread
    // (systemd/facegate.service); store calls are serialized anyway.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .max_blocking_threads(16)
        .enable_all()
        .build()?;
    rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let (trigger, shutdown) = shutdown::channel();
        let (reload_tx, reload_rx) = tokio::sync::mpsc::unbounded_channel();
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        let path = path.to_path_buf();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = term.recv() => break,
                    _ = int.recv() => break,
                    _ = hup.recv() => match config::load(&path) {
                        Ok(new) => {
                            let _ = reload_tx.send(new);
                        }
                        Err(e) => tracing::error!(
                            "reload refused, the running configuration stays: {}",
                            super::one_line(&e.to_string())
                        ),
                    },
                }
            }
            trigger.fire(shutdown::Reason::Signal);
        });
        daemon::run_with_reload(cfg, shutdown, Some(reload_rx)).await?;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
