//! How a conversion reports progress: the `veil` CLI draws bars (or plain lines) behind
//! these traits; a library caller may ignore them ([`NoProgress`]).

use std::sync::Arc;

/// The progress display of one run.
pub trait Progress: Sync {
    /// A line of text (above the bars, when there are any).
    fn line(&self, text: &str);
    /// The progress of one layer, labelled `label`.
    fn layer(&self, label: String) -> Arc<dyn LayerProgress>;
}

/// The progress of one layer; usable from any thread.
pub trait LayerProgress: Send + Sync {
    /// Starts stage `name` of `total` bytes.
    fn stage(&self, name: &'static str, total: u64);
    /// Bytes done in the current stage.
    fn set(&self, position: u64);
    /// Ends the current stage, with a note.
    fn end_stage(&self, note: &str);
    /// The layer is done.
    fn finish(&self, summary: &str);
    /// The layer failed.
    fn fail(&self, why: &str);
}

/// Progress that shows nothing.
pub struct NoProgress;

impl Progress for NoProgress {
    fn line(&self, _text: &str) {}
    fn layer(&self, _label: String) -> Arc<dyn LayerProgress> {
        Arc::new(NoProgress)
    }
}

impl LayerProgress for NoProgress {
    fn stage(&self, _name: &'static str, _total: u64) {}
    fn set(&self, _position: u64) {}
    fn end_stage(&self, _note: &str) {}
    fn finish(&self, _summary: &str) {}
    fn fail(&self, _why: &str) {}
}
