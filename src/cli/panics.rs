//! The process's panic policy (ARCHITECTURE I16): a panic inside the image
//! decoder boundary (`sanitize::decoding`) is caught there and refuses the
//! file; any other panic is a bug in facegate, printed as usual and then
//! fatal, so a half-working daemon never goes on (systemd restarts it).

/// Installs the hook; called first thing in `main`.
pub fn install() {
    let print = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if facegate::sanitize::decoding() {
            // Reported where it is caught: the pair's quarantine reason.
            tracing::debug!("image decoder panicked: {info}");
            return;
        }
        print(info);
        std::process::abort();
    }));
}
