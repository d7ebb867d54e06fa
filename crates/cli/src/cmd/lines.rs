//! Standard input, one line at a time, on demand.
//!
//! A plain thread reads a line only when asked, so nothing is read ahead:
//! a hidden password prompt on the terminal and this reader never compete
//! for the same keystrokes, and a piped script is consumed exactly line by
//! line.

use std::io::BufRead;

use tokio::sync::{mpsc, oneshot};

/// A line source over standard input.
pub struct Lines {
    requests: std::sync::mpsc::Sender<oneshot::Sender<Option<String>>>,
    pending: Option<oneshot::Receiver<Option<String>>>,
}

impl Lines {
    /// Starts the reader thread.
    pub fn stdin() -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<oneshot::Sender<Option<String>>>();
        std::thread::spawn(move || {
            let stdin = std::io::stdin();
            let mut lock = stdin.lock();
            while let Ok(reply) = rx.recv() {
                let mut line = String::new();
                let got = match lock.read_line(&mut line) {
                    Ok(0) | Err(_) => None,
                    Ok(_) => {
                        let trimmed = line.trim_end_matches(['\n', '\r']).len();
                        line.truncate(trimmed);
                        Some(line)
                    }
                };
                let eof = got.is_none();
                let _ = reply.send(got);
                if eof {
                    break;
                }
            }
        });
        let _ = mpsc::channel::<()>(1);
        Self {
            requests: tx,
            pending: None,
        }
    }

    /// The next line without its line ending; `None` at end of input.
    ///
    /// # Cancel safety
    /// Cancel safe: a line requested and not yet taken is kept for the next
    /// call.
    pub async fn next(&mut self) -> Option<String> {
        if self.pending.is_none() {
            let (tx, rx) = oneshot::channel();
            if self.requests.send(tx).is_err() {
                return None;
            }
            self.pending = Some(rx);
        }
        let rx = self.pending.as_mut().expect("set above");
        let line = rx.await.ok().flatten();
        self.pending = None;
        line
    }
}
