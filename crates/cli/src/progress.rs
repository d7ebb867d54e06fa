//! Progress bars for file transfers: bytes, rate and time left, drawn on
//! standard error when it is a terminal, and not at all otherwise.

use std::io::IsTerminal;
use std::sync::{Arc, Mutex};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use telepound_client::{NoProgress, Progress};

/// One bar at a time, replaced for each transfer.
struct Bar {
    // std Mutex: set and read without awaiting.
    bar: Mutex<Option<ProgressBar>>,
    verb: &'static str,
}

impl Progress for Bar {
    fn start(&self, name: &str, total: u64, done: u64) {
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} {eta} left",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_message(format!("{} {}", self.verb, crate::output::one_line(name)));
        bar.set_position(done);
        *self.bar.lock().expect("bar lock") = Some(bar);
    }

    fn advance(&self, n: u64) {
        if let Some(b) = &*self.bar.lock().expect("bar lock") {
            b.inc(n);
        }
    }

    fn finish(&self) {
        if let Some(b) = self.bar.lock().expect("bar lock").take() {
            b.finish_and_clear();
        }
    }
}

/// Bars on a terminal, nothing otherwise.
pub fn bars(verb: &'static str) -> Arc<dyn Progress> {
    if std::io::stderr().is_terminal() {
        Arc::new(Bar {
            bar: Mutex::new(None),
            verb,
        })
    } else {
        Arc::new(NoProgress)
    }
}
