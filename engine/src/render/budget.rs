//! Bounds on what one template may cost, since campaign texts are written outside Herald:
//!
//! - loop ranges (`{% for i in (1..n) %}`) need whole-number bounds at most
//!   [`MAX_LOOP_RANGE`] apart, checked when the template is compiled (`campaign validate`),
//!   because Liquid builds the whole range in memory before the first iteration;
//! - rendering stops after [`MAX_STEPS`] tags or blocks, or after [`RENDER_BUDGET`] of time;
//! - the output stops at [`MAX_OUTPUT_BYTES`].

use std::{
    cell::Cell,
    io::{self, Write},
    time::{Duration, Instant},
};

use liquid_core::{
    parser::{BlockReflection, ParseBlock, ParseTag, TagBlock, TagReflection},
    Language, Renderable, Runtime, TagTokenIter,
};

/// Widest loop range `(a..b)`: `b - a + 1` at most this.
pub const MAX_LOOP_RANGE: i64 = 1_000;
/// Most tags and blocks (each loop iteration's included) one rendering may execute.
pub const MAX_STEPS: u64 = 10_000;
/// Longest one rendering may take.
pub const RENDER_BUDGET: Duration = Duration::from_millis(100);
/// Largest rendered text, bytes (APNs and FCM payloads are at most 4 KiB anyway).
pub const MAX_OUTPUT_BYTES: usize = 16 * 1024;

thread_local! {
    /// The meter of the rendering in progress on this thread.
    static METER: Cell<Meter> = const { Cell::new(Meter { started: None, steps: 0, exceeded: None }) };
}

#[derive(Clone, Copy)]
struct Meter {
    started: Option<Instant>,
    steps: u64,
    exceeded: Option<Exceeded>,
}

/// Which bound a rendering went past.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exceeded {
    /// More than [`MAX_STEPS`] tags or blocks.
    Steps,
    /// Longer than [`RENDER_BUDGET`].
    Time,
    /// More than [`MAX_OUTPUT_BYTES`] of output.
    Output,
}

impl std::fmt::Display for Exceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exceeded::Steps => write!(f, "more than {MAX_STEPS} tag or loop steps"),
            Exceeded::Time => write!(f, "longer than {} ms", RENDER_BUDGET.as_millis()),
            Exceeded::Output => write!(f, "more than {MAX_OUTPUT_BYTES} bytes of output"),
        }
    }
}

/// Runs one rendering under the bounds: `render` writes into the given writer, which refuses
/// output past [`MAX_OUTPUT_BYTES`]. Returns the output, or which bound was passed.
pub fn metered<E>(
    render: impl FnOnce(&mut dyn Write) -> Result<(), E>,
) -> Result<Result<Vec<u8>, E>, Exceeded> {
    METER.set(Meter { started: Some(Instant::now()), steps: 0, exceeded: None });
    let mut output = BoundedOutput { bytes: Vec::new() };
    let result = render(&mut output);
    let meter = METER.replace(Meter { started: None, steps: 0, exceeded: None });
    match meter.exceeded {
        Some(exceeded) => Err(exceeded),
        None => Ok(result.map(|()| output.bytes)),
    }
}

/// Counts one step of the rendering in progress; an error once a bound is passed.
fn step() -> liquid_core::Result<()> {
    let mut meter = METER.get();
    meter.steps += 1;
    let started = *meter.started.get_or_insert_with(Instant::now);
    if meter.steps > MAX_STEPS {
        meter.exceeded = Some(Exceeded::Steps);
    } else if started.elapsed() > RENDER_BUDGET {
        meter.exceeded = Some(Exceeded::Time);
    }
    METER.set(meter);
    match meter.exceeded {
        Some(exceeded) => Err(liquid_core::Error::with_msg(format!("render budget: {exceeded}"))),
        None => Ok(()),
    }
}

struct BoundedOutput {
    bytes: Vec<u8>,
}

impl Write for BoundedOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.bytes.len() + buf.len() > MAX_OUTPUT_BYTES {
            let mut meter = METER.get();
            meter.exceeded = Some(Exceeded::Output);
            METER.set(meter);
            return Err(io::Error::other(format!("render budget: {}", Exceeded::Output)));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A tag or block of the standard library whose every rendering counts as a step.
#[derive(Clone)]
pub struct Metered<T>(pub T);

#[derive(Debug)]
struct Step(Box<dyn Renderable>);

impl Renderable for Step {
    fn render_to(&self, writer: &mut dyn Write, runtime: &dyn Runtime) -> liquid_core::Result<()> {
        step()?;
        self.0.render_to(writer, runtime)
    }
}

impl ParseTag for Metered<Box<dyn ParseTag>> {
    fn parse(
        &self,
        arguments: TagTokenIter<'_>,
        options: &Language,
    ) -> liquid_core::Result<Box<dyn Renderable>> {
        Ok(Box::new(Step(self.0.parse(arguments, options)?)))
    }

    fn reflection(&self) -> &dyn TagReflection {
        self.0.reflection()
    }
}

impl ParseBlock for Metered<Box<dyn ParseBlock>> {
    fn parse(
        &self,
        arguments: TagTokenIter<'_>,
        block: TagBlock<'_, '_>,
        options: &Language,
    ) -> liquid_core::Result<Box<dyn Renderable>> {
        Ok(Box::new(Step(self.0.parse(arguments, block, options)?)))
    }

    fn reflection(&self) -> &dyn BlockReflection {
        self.0.reflection()
    }
}

/// Checks the loop ranges of a `{% … %}` tag body: `(a..b)` needs whole-number bounds at
/// most [`MAX_LOOP_RANGE`] apart.
pub fn check_loop_ranges(tag: &str) -> Result<(), String> {
    let tag = tag.trim_matches(|c: char| c == '-' || c.is_whitespace());
    let name = tag.split_whitespace().next().unwrap_or_default();
    if name != "for" && name != "tablerow" {
        return Ok(());
    }
    let Some(open) = tag.find('(') else { return Ok(()) };
    let range = &tag[open + 1..tag[open..].find(')').map_or(tag.len(), |close| open + close)];
    let bound = |text: &str| text.trim().parse::<i64>().ok();
    let bad = || {
        format!(
            "loop range ({range}) must have whole-number bounds at most {MAX_LOOP_RANGE} apart, \
             e.g. (1..10)"
        )
    };
    let (low, high) = range.split_once("..").ok_or_else(bad)?;
    match (bound(low), bound(high)) {
        (Some(low), Some(high)) if high.saturating_sub(low) < MAX_LOOP_RANGE => Ok(()),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loop_ranges_need_close_literal_bounds() {
        assert_eq!(check_loop_ranges(" for i in (1..10) "), Ok(()));
        assert_eq!(check_loop_ranges("- for i in (-5..994) -"), Ok(()));
        assert_eq!(check_loop_ranges(" if a "), Ok(()));
        assert_eq!(check_loop_ranges(" for x in items "), Ok(()));
        for bad in [
            " for i in (1..1001) ",
            " for i in (1..999999999999) ",
            " for i in (1..event.n) ",
            " tablerow i in (-9223372036854775808..9223372036854775807) ",
            " for i in (1 ",
        ] {
            let error = check_loop_ranges(bad).unwrap_err();
            assert!(error.contains("at most 1000 apart"), "{bad}: {error}");
        }
    }
}
