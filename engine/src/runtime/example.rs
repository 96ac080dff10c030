//! A small example topology: per-key counts with timers. It shows the processor API, and the
//! runtime's crash, rebalance and timer tests and its benchmark run it.
//!
//! Every input record with a key and a UTF-8 value increments its key's count and emits
//! `<value>:<count>` to the output topic. Values `schedule:<ms>` and `cancel:<ms>` also schedule
//! or cancel a timer for the key at that time; a fired timer emits `fired:<ms>`. Anything else
//! that is not a key with UTF-8 text is rejected to the dead-letter topic.

use super::{
    ProcessError, Processor, ProcessorContext, RuntimeError, SourceRecord, StreamTopology, Timer,
};

/// Name of the counts store.
pub const COUNTS_STORE: &str = "counts";

/// The counting topology reading `input` and writing `output`.
pub fn counting_topology(
    app_id: &str,
    input: &str,
    output: &str,
) -> Result<StreamTopology, RuntimeError> {
    let sink = output.to_string();
    StreamTopology::builder(app_id)
        .sub_topology(
            "count",
            move |_| CountingProcessor { output: sink.clone() },
            |s| s.source(input).store(COUNTS_STORE).sink(output),
        )
        .build()
}

/// The processor of [`counting_topology`].
pub struct CountingProcessor {
    output: String,
}

impl Processor for CountingProcessor {
    fn process(
        &mut self,
        ctx: &mut ProcessorContext<'_>,
        record: &SourceRecord<'_>,
    ) -> Result<(), ProcessError> {
        let key = record.key.ok_or_else(|| ProcessError::reject("record has no key"))?;
        let value = record.value.ok_or_else(|| ProcessError::reject("record has no value"))?;
        let text = std::str::from_utf8(value)
            .map_err(|e| ProcessError::reject(format!("value is not UTF-8 text: {e}")))?;
        if let Some(at) = text.strip_prefix("schedule:") {
            ctx.schedule(parse_time(at)?, key)?;
        } else if let Some(at) = text.strip_prefix("cancel:") {
            ctx.cancel(parse_time(at)?, key)?;
        }
        let mut counts = ctx.store(COUNTS_STORE)?;
        let count = counts.get_as::<u64>(key)?.unwrap_or(0) + 1;
        counts.put_as(key, &count)?;
        ctx.send(&self.output, key, format!("{text}:{count}").as_bytes())?;
        Ok(())
    }

    fn on_timer(
        &mut self,
        ctx: &mut ProcessorContext<'_>,
        timer: &Timer,
    ) -> Result<(), ProcessError> {
        ctx.send(&self.output, &timer.key, format!("fired:{}", timer.at_ms).as_bytes())?;
        Ok(())
    }
}

fn parse_time(text: &str) -> Result<i64, ProcessError> {
    text.parse()
        .map_err(|_| ProcessError::reject(format!("{text:?} is not a time in milliseconds")))
}
