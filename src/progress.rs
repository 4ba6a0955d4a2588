//! Progress of `llava convert` and `llava quantize` on stderr: a bar (tensors and bytes, ETA)
//! on a terminal, a plain line every few seconds otherwise, the per-tensor table with
//! `--verbose`, and the summary line.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use llava_convert::{ConvertSummary, Monitor, TensorDone};

/// Between two plain progress lines when stderr is not a terminal: often enough to show life
/// in a CI log, rarely enough that a 7B conversion prints a page, not thousands of lines.
const PLAIN_INTERVAL: Duration = Duration::from_secs(5);

const MIB: f64 = (1u64 << 20) as f64;

/// Reports one output file's conversion.
pub struct CliMonitor {
    path: PathBuf,
    verbose: bool,
    bar: Option<ProgressBar>,
    n_tensors: usize,
    tensors_done: usize,
    source_total: u64,
    source_done: u64,
    started: Instant,
    last_line: Instant,
}

impl CliMonitor {
    pub fn new(path: &Path, verbose: bool) -> CliMonitor {
        let now = Instant::now();
        CliMonitor {
            path: path.to_owned(),
            verbose,
            bar: None,
            n_tensors: 0,
            tensors_done: 0,
            source_total: 0,
            source_done: 0,
            started: now,
            last_line: now,
        }
    }

    /// A line above the bar (or plain, without one).
    fn line(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => diag!("{text}"),
        }
    }

    /// Clears the bar and returns the summary line, with the source read rate, to print once
    /// the file is in place.
    pub fn finish(self, s: &ConvertSummary) -> String {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        let secs = self.started.elapsed().as_secs_f64();
        format!(
            "{}, {:.0} MB/s read",
            summary_line(&self.path, s, secs),
            self.source_done as f64 / 1e6 / secs.max(1e-9)
        )
    }
}

impl Monitor for CliMonitor {
    fn wants_rmse(&self) -> bool {
        self.verbose
    }

    fn begin(&mut self, n_tensors: usize, source_bytes: u64) {
        self.n_tensors = n_tensors;
        self.source_total = source_bytes;
        self.started = Instant::now();
        self.last_line = self.started;
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(source_bytes);
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} \
                     {msg} ETA {eta}",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
            let name = self.path.file_name().unwrap_or(self.path.as_os_str());
            bar.set_prefix(name.to_string_lossy().into_owned());
            bar.set_message(format!("0/{n_tensors} tensors"));
            self.bar = Some(bar);
        }
        if self.verbose {
            self.line(&format!(
                "{:<36} {:<6} {:<22} {:>10}",
                "tensor", "type", "shape", "RMSE"
            ));
        }
    }

    fn tensor_done(&mut self, t: &TensorDone<'_>) {
        self.tensors_done += 1;
        self.source_done += t.source_bytes;
        if self.verbose {
            let shape = format!("{:?}", t.shape);
            let rmse = t.rmse.map(|e| format!("{e:.3e}")).unwrap_or_default();
            self.line(&format!(
                "{:<36} {:<6} {:<22} {:>10}",
                t.name,
                t.ty.name(),
                shape,
                rmse
            ));
        }
        if let Some(bar) = &self.bar {
            bar.set_message(format!("{}/{} tensors", self.tensors_done, self.n_tensors));
            bar.inc(t.source_bytes);
        } else if self.last_line.elapsed() >= PLAIN_INTERVAL && self.tensors_done < self.n_tensors {
            self.last_line = Instant::now();
            let secs = self.started.elapsed().as_secs_f64();
            let rate = self.source_done as f64 / secs.max(1e-9);
            let eta = self.source_total.saturating_sub(self.source_done) as f64 / rate.max(1.0);
            diag!(
                "{}: {}/{} tensors, {:.0}/{:.0} MiB read, ETA {:.0} s",
                self.path.display(),
                self.tensors_done,
                self.n_tensors,
                self.source_done as f64 / MIB,
                self.source_total as f64 / MIB,
                eta
            );
        }
    }
}

/// The summary of a written file.
pub fn summary_line(path: &Path, s: &ConvertSummary, secs: f64) -> String {
    format!(
        "wrote {}: {} tensors, {} parameters, {:.1} MiB ({:.2} bits/weight) in {:.1} s",
        path.display(),
        s.tensors,
        s.parameters,
        s.bytes as f64 / MIB,
        s.bytes as f64 * 8.0 / s.parameters.max(1) as f64,
        secs
    )
}
