//! One variant's message templates, compiled once and rendered per user. The campaign stage,
//! previews and test sends all render through this, so all three produce the same texts.

use super::{MessageTemplate, RenderError};
use crate::{campaign::Message, model::Properties, payload::RenderedMessage};

/// A template of a variant that did not render for a user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {error}")]
pub struct FieldError {
    /// The message field: `title`, `body`, `subtitle`, `deep_link` or `image_url`.
    pub field: &'static str,
    /// Why.
    pub error: RenderError,
}

/// The compiled templates of one variant (`what[i]` of a campaign).
#[derive(Debug)]
pub struct CompiledVariant {
    title: MessageTemplate,
    body: MessageTemplate,
    subtitle: Option<MessageTemplate>,
    deep_link: Option<MessageTemplate>,
    image_url: Option<MessageTemplate>,
}

impl CompiledVariant {
    /// Compiles every template of `message`; the error names the field (`body: …`).
    pub fn compile(message: &Message) -> Result<Self, String> {
        let compile = |field: &str, source: &str| {
            MessageTemplate::compile(source).map_err(|e| format!("{field}: {e}"))
        };
        let optional = |field: &str, source: &Option<String>| {
            source.as_deref().map(|s| compile(field, s)).transpose()
        };
        Ok(Self {
            title: compile("title", &message.title)?,
            body: compile("body", &message.body)?,
            subtitle: optional("subtitle", &message.subtitle)?,
            deep_link: optional("deep_link", &message.deep_link)?,
            image_url: optional("image_url", &message.image_url)?,
        })
    }

    /// Renders the texts for a user with `profile` and triggering-event `event` properties.
    pub fn render(
        &self,
        profile: &Properties,
        event: &Properties,
        strict: bool,
    ) -> Result<RenderedMessage, FieldError> {
        let render = |field: &'static str, t: &MessageTemplate| {
            t.render(profile, event, strict).map_err(|error| FieldError { field, error })
        };
        let optional = |field: &'static str, t: &Option<MessageTemplate>| {
            t.as_ref().map(|t| render(field, t)).transpose()
        };
        Ok(RenderedMessage {
            title: render("title", &self.title)?,
            body: render("body", &self.body)?,
            subtitle: optional("subtitle", &self.subtitle)?,
            deep_link: optional("deep_link", &self.deep_link)?,
            image_url: optional("image_url", &self.image_url)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{campaign::PushOptions, model::PropertyValue};

    fn message(title: &str, subtitle: Option<&str>) -> Message {
        Message {
            id: "A".into(),
            title: title.into(),
            body: "Hi {{ profile.name | default: 'there' }}".into(),
            subtitle: subtitle.map(Into::into),
            deep_link: None,
            image_url: None,
            push: PushOptions::default(),
        }
    }

    #[test]
    fn renders_every_text_of_the_variant() {
        let variant = CompiledVariant::compile(&message("Sale", Some("{{ event.x }}"))).unwrap();
        let profile = Properties::from([("name".into(), PropertyValue::String("Ana".into()))]);
        let event = Properties::from([("x".into(), PropertyValue::Long(3))]);
        let rendered = variant.render(&profile, &event, true).unwrap();
        assert_eq!(
            (rendered.title.as_str(), rendered.body.as_str(), rendered.subtitle.as_deref()),
            ("Sale", "Hi Ana", Some("3"))
        );
    }

    #[test]
    fn a_template_that_does_not_compile_is_named_by_its_field() {
        let error = CompiledVariant::compile(&message("ok", Some("{{ x"))).unwrap_err();
        assert!(error.starts_with("subtitle: "), "{error}");
    }
}
