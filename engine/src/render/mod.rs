//! Liquid templates of message texts: compiled once per campaign, rendered per user with the
//! user's profile and the triggering event's properties.
//!
//! Templates see two objects, `profile` and `event`. A variable a template references but the
//! user lacks renders as nil, so `{{ profile.first_name | default: 'there' }}` works; in strict
//! mode a missing variable referenced in an output tag *without* `default` is an error, so the
//! user is skipped instead of receiving "Hi !".
//!
//! Templates are bounded (see [`budget`]): loop ranges when compiled, steps, time and output
//! size when rendered.

pub mod budget;
pub mod preview;
pub mod variant;

use std::{collections::BTreeSet, panic::AssertUnwindSafe, sync::OnceLock};

use liquid::model::{Object, Value};
use liquid_core::parser::{ParseBlock, ParseTag};
use liquid_lib::stdlib;
use thiserror::Error;

use self::budget::Metered;
use crate::model::{Properties, PropertyValue};

/// The Liquid parser with the standard tags, blocks and filters (`default`, `upcase`, …), every
/// tag and block metered against the render budget.
fn parser() -> &'static liquid::Parser {
    static PARSER: OnceLock<liquid::Parser> = OnceLock::new();
    PARSER.get_or_init(|| {
        let tags: [Box<dyn ParseTag>; 8] = [
            Box::new(stdlib::AssignTag),
            Box::new(stdlib::BreakTag),
            Box::new(stdlib::ContinueTag),
            Box::new(stdlib::CycleTag),
            Box::new(stdlib::IncludeTag),
            Box::new(stdlib::IncrementTag),
            Box::new(stdlib::DecrementTag),
            Box::new(stdlib::RenderTag),
        ];
        let blocks: [Box<dyn ParseBlock>; 9] = [
            Box::new(stdlib::RawBlock),
            Box::new(stdlib::IfBlock),
            Box::new(stdlib::UnlessBlock),
            Box::new(stdlib::IfChangedBlock),
            Box::new(stdlib::ForBlock),
            Box::new(stdlib::TableRowBlock),
            Box::new(stdlib::CommentBlock),
            Box::new(stdlib::CaptureBlock),
            Box::new(stdlib::CaseBlock),
        ];
        let builder = tags
            .into_iter()
            .fold(liquid::ParserBuilder::with_stdlib(), |b, tag| b.tag(Metered(tag)));
        blocks
            .into_iter()
            .fold(builder, |b, block| b.block(Metered(block)))
            .build()
            .expect("the standard Liquid library builds")
    })
}

/// Checks that `source` parses as a Liquid template; the error says what and where.
pub fn check_template(source: &str) -> Result<(), String> {
    MessageTemplate::compile(source).map(|_| ())
}

/// Why a template did not render for a user.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RenderError {
    /// Strict mode: a variable used without `default` is missing for this user.
    #[error("missing template variable {0} (no default)")]
    MissingVariable(String),
    /// Liquid failed while rendering.
    #[error("template error: {0}")]
    Liquid(String),
    /// The rendering went past a bound of [`budget`].
    #[error("template over its render budget: {0}")]
    OverBudget(budget::Exceeded),
}

/// The two objects templates read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// `profile.<name>`.
    Profile,
    /// `event.<name>`.
    Event,
}

impl Scope {
    fn prefix(self) -> &'static str {
        match self {
            Scope::Profile => "profile.",
            Scope::Event => "event.",
        }
    }
}

/// A compiled template and the variables it references.
pub struct MessageTemplate {
    template: liquid::Template,
    /// Every `profile.x` / `event.x` the template mentions.
    referenced: BTreeSet<(Scope, String)>,
    /// Those used in an output tag without a `default` filter.
    required: BTreeSet<(Scope, String)>,
}

impl std::fmt::Debug for MessageTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageTemplate")
            .field("referenced", &self.referenced)
            .finish_non_exhaustive()
    }
}

impl MessageTemplate {
    /// Parses `source`; the error is Liquid's message on one line, or names a loop range that
    /// is not bounded (see [`budget::check_loop_ranges`]).
    pub fn compile(source: &str) -> Result<Self, String> {
        let template =
            parser().parse(source).map_err(|e| e.to_string().trim().replace('\n', " "))?;
        let mut referenced = BTreeSet::new();
        let mut required = BTreeSet::new();
        for (block, is_output) in blocks(source) {
            if !is_output {
                budget::check_loop_ranges(block)?;
            }
            let defaulted = block.contains("default");
            for variable in variables(block) {
                if is_output && !defaulted {
                    required.insert(variable.clone());
                }
                referenced.insert(variable);
            }
        }
        Ok(Self { template, referenced, required })
    }

    /// Names of the profile properties the template references.
    pub fn profile_variables(&self) -> impl Iterator<Item = &str> {
        self.referenced.iter().filter(|(s, _)| *s == Scope::Profile).map(|(_, n)| n.as_str())
    }

    /// Renders for a user with `profile` and triggering-event `event` properties.
    pub fn render(
        &self,
        profile: &Properties,
        event: &Properties,
        strict: bool,
    ) -> Result<String, RenderError> {
        let lookup = |scope: Scope| match scope {
            Scope::Profile => profile,
            Scope::Event => event,
        };
        if strict {
            if let Some((scope, name)) = self.required.iter().find(|(scope, name)| {
                matches!(lookup(*scope).get(name), None | Some(PropertyValue::Null))
            }) {
                return Err(RenderError::MissingVariable(format!("{}{name}", scope.prefix())));
            }
        }
        let mut objects = [(Scope::Profile, Object::new()), (Scope::Event, Object::new())];
        for (scope, object) in &mut objects {
            for (_, name) in self.referenced.iter().filter(|(s, _)| s == scope) {
                let value = lookup(*scope).get(name).map_or(Value::Nil, liquid_value);
                object.insert(name.clone().into(), value);
            }
        }
        let [(_, profile_object), (_, event_object)] = objects;
        let mut globals = Object::new();
        globals.insert("profile".into(), Value::Object(profile_object));
        globals.insert("event".into(), Value::Object(event_object));
        let rendered = budget::metered(|out| {
            // A panic inside the Liquid library on hostile input must not stop the engine.
            std::panic::catch_unwind(AssertUnwindSafe(|| self.template.render_to(out, &globals)))
                .unwrap_or_else(|_| Err(liquid::Error::with_msg("the template library panicked")))
        });
        let bytes = rendered
            .map_err(RenderError::OverBudget)?
            .map_err(|e| RenderError::Liquid(e.to_string().trim().replace('\n', " ")))?;
        String::from_utf8(bytes).map_err(|e| RenderError::Liquid(e.to_string()))
    }
}

fn liquid_value(value: &PropertyValue) -> Value {
    match value {
        PropertyValue::Null => Value::Nil,
        PropertyValue::Bool(b) => Value::scalar(*b),
        PropertyValue::Long(n) => Value::scalar(*n),
        PropertyValue::Double(n) => Value::scalar(*n),
        PropertyValue::String(s) => Value::scalar(s.clone()),
    }
}

/// The contents of `{{ … }}` (output: true) and `{% … %}` (output: false) blocks.
fn blocks(source: &str) -> Vec<(&str, bool)> {
    let mut found = Vec::new();
    let mut rest = source;
    while let Some(start) = rest.find('{') {
        let after = &rest[start + 1..];
        let (close, output) = match after.chars().next() {
            Some('{') => ("}}", true),
            Some('%') => ("%}", false),
            _ => {
                rest = after;
                continue;
            }
        };
        let body = &after[1..];
        let Some(end) = body.find(close) else { break };
        found.push((&body[..end], output));
        rest = &body[end + close.len()..];
    }
    found
}

/// `profile.x` and `event.x` references in a block.
fn variables(block: &str) -> Vec<(Scope, String)> {
    let mut found = Vec::new();
    for scope in [Scope::Profile, Scope::Event] {
        for (at, _) in block.match_indices(scope.prefix()) {
            let preceded_by_word = block[..at]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '.');
            let name: String = block[at + scope.prefix().len()..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !preceded_by_word && !name.is_empty() {
                found.push((scope, name));
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(pairs: &[(&str, PropertyValue)]) -> Properties {
        pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
    }

    #[test]
    fn renders_profile_and_event_properties_with_emojis() {
        let template = MessageTemplate::compile(
            "{{ profile.first_name | upcase }}, {{ event.item }} costs {{ event.price }} 🛒",
        )
        .unwrap();
        let profile = props(&[("first_name", PropertyValue::String("Zoë".into()))]);
        let event = props(&[
            ("item", PropertyValue::String("Matcha 🍵".into())),
            ("price", PropertyValue::Double(12.5)),
        ]);
        assert_eq!(
            template.render(&profile, &event, true).unwrap(),
            "ZOË, Matcha 🍵 costs 12.5 🛒"
        );
    }

    #[test]
    fn default_filter_covers_a_missing_variable_even_in_strict_mode() {
        let template =
            MessageTemplate::compile("Hi {{ profile.first_name | default: 'there' }}!").unwrap();
        assert_eq!(
            template.render(&Properties::new(), &Properties::new(), true).unwrap(),
            "Hi there!"
        );
    }

    #[test]
    fn strict_mode_refuses_a_missing_variable_without_default() {
        let template = MessageTemplate::compile("Hi {{ profile.first_name }}!").unwrap();
        assert_eq!(
            template.render(&Properties::new(), &Properties::new(), true),
            Err(RenderError::MissingVariable("profile.first_name".into()))
        );
        assert_eq!(template.render(&Properties::new(), &Properties::new(), false).unwrap(), "Hi !");
    }

    #[test]
    fn conditions_on_missing_variables_are_not_errors() {
        let template =
            MessageTemplate::compile("{% if profile.vip %}VIP {% endif %}offer").unwrap();
        assert_eq!(template.render(&Properties::new(), &Properties::new(), true).unwrap(), "offer");
        let vip = props(&[("vip", PropertyValue::Bool(true))]);
        assert_eq!(template.render(&vip, &Properties::new(), true).unwrap(), "VIP offer");
    }

    #[test]
    fn syntax_errors_are_reported_at_compile_time() {
        let error = MessageTemplate::compile("Hi {{ profile.name ").unwrap_err();
        assert!(error.contains("liquid"), "{error}");
    }

    #[test]
    fn a_huge_loop_range_is_refused_at_compile_time() {
        let error =
            MessageTemplate::compile("{% for i in (1..9999999999) %}x{% endfor %}").unwrap_err();
        assert!(error.contains("loop range (1..9999999999)"), "{error}");
        let error =
            MessageTemplate::compile("{% for i in (1..event.n) %}x{% endfor %}").unwrap_err();
        assert!(error.contains("whole-number bounds"), "{error}");
    }

    #[test]
    fn nested_loops_stop_at_the_step_budget() {
        let template = MessageTemplate::compile(
            "{% for a in (1..1000) %}{% for b in (1..1000) %}{% for c in (1..1000) %}\
             {% assign x = c %}{% endfor %}{% endfor %}{% endfor %}",
        )
        .unwrap();
        assert_eq!(
            template.render(&Properties::new(), &Properties::new(), false),
            Err(RenderError::OverBudget(budget::Exceeded::Steps))
        );
    }

    #[test]
    fn output_stops_at_its_bound() {
        let template = MessageTemplate::compile(
            "{% for a in (1..1000) %}{{ event.text }}{{ event.text }}{% endfor %}",
        )
        .unwrap();
        let event = props(&[("text", PropertyValue::String("x".repeat(100)))]);
        assert_eq!(
            template.render(&Properties::new(), &event, false),
            Err(RenderError::OverBudget(budget::Exceeded::Output))
        );
    }

    #[test]
    fn a_growing_string_stops_at_the_budget() {
        let template = MessageTemplate::compile(
            "{% assign s = 'xxxxxxxxxxxxxxxx' %}{% for a in (1..100) %}\
             {% assign s = s | append: s %}{% endfor %}{{ s | size }}",
        )
        .unwrap();
        let error = template.render(&Properties::new(), &Properties::new(), false).unwrap_err();
        assert!(matches!(error, RenderError::OverBudget(_)), "{error}");
    }

    #[test]
    fn profile_variables_are_collected() {
        let template = MessageTemplate::compile(
            "{{ profile.a }} {{ event.b }} {% if profile.c %}{{ xprofile.d }}{% endif %}",
        )
        .unwrap();
        assert_eq!(template.profile_variables().collect::<Vec<_>>(), vec!["a", "c"]);
    }
}
