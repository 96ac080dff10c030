//! Previews: a campaign rendered for one user, per variant, as the exact APNs and FCM request
//! bodies the senders would send, each with its size against the 4,096-byte limit. Built with
//! the campaign stage's own renderer ([`CompiledVariant`]) and payload builders
//! ([`payload::request`]), so a preview is what a send would be.

use std::collections::BTreeMap;

use serde::Serialize;
use utoipa::ToSchema;

use super::variant::CompiledVariant;
use crate::{
    campaign::Campaign,
    model::{Device, Platform, Properties},
    payload::{self, Addressing, PayloadError, RenderedMessage, MAX_PAYLOAD_BYTES},
};

/// The token shown in a preview for a user without a device on a platform.
pub const NO_DEVICE_TOKEN: &str = "DEVICE_TOKEN";

/// A campaign rendered for one user.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Preview {
    /// Campaign previewed.
    pub campaign_id: String,
    /// User rendered for.
    pub user_id: String,
    /// One entry per variant, in the campaign's order.
    pub variants: Vec<VariantPreview>,
}

/// One variant rendered for the user.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct VariantPreview {
    /// Variant id.
    pub variant: String,
    /// The rendered texts; absent when a template failed.
    pub texts: Option<Texts>,
    /// Why the variant does not render for this user (the user would be skipped,
    /// `template_error`), e.g. `body: missing template variable profile.first_name (no default)`.
    pub error: Option<String>,
    /// The request each of the user's devices would get (one per targeted platform, with a
    /// placeholder token, when the user has no device there).
    pub requests: Vec<RequestPreview>,
}

/// The rendered texts of a variant.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Texts {
    /// Title.
    pub title: String,
    /// Body.
    pub body: String,
    /// Subtitle (iOS).
    pub subtitle: Option<String>,
    /// Deep link.
    pub deep_link: Option<String>,
    /// Image URL.
    pub image_url: Option<String>,
}

/// The provider request of one device.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RequestPreview {
    /// The device (absent: a placeholder for a platform the user has no device on).
    pub device_id: Option<String>,
    /// `IOS` (APNs) or `ANDROID` (FCM).
    #[schema(value_type = String)]
    pub platform: Platform,
    /// Size of the JSON body in bytes.
    pub bytes: usize,
    /// The providers' limit, 4,096 bytes.
    pub limit: usize,
    /// The exact JSON body; absent when over the limit (never truncated: not sent).
    pub payload: Option<String>,
    /// APNs headers (none for FCM).
    pub headers: BTreeMap<String, String>,
    /// Why it would not be sent, e.g. `apns payload is 5123 bytes; the limit is 4096`.
    pub error: Option<String>,
}

/// One device's request, built for a send or a preview.
#[derive(Debug, Clone)]
pub struct DeviceRequest {
    /// The device.
    pub device: Device,
    /// The message id in its payload.
    pub message_id: String,
    /// The JSON body and headers, or why there are none.
    pub built: Result<(String, BTreeMap<String, String>), PayloadError>,
}

/// Renders variant `variant` of `campaign` for a user with `profile` (no triggering event:
/// templates reading `event.*` without a default fail) and builds the request of each of
/// `devices` at `now_ms`, each with the message id `message_id(device)`. A template that does
/// not compile or render is the error, naming the field.
pub fn render_for_devices(
    campaign: &Campaign,
    variant: usize,
    profile: &Properties,
    devices: &[Device],
    message_id: impl Fn(&Device) -> String,
    now_ms: i64,
) -> Result<(RenderedMessage, Vec<DeviceRequest>), String> {
    let message = &campaign.what[variant];
    let compiled = CompiledVariant::compile(message)?;
    let rendered = compiled.render(profile, &Properties::new(), true).map_err(|e| e.to_string())?;
    let requests = devices
        .iter()
        .map(|device| {
            let message_id = message_id(device);
            let to = Addressing {
                campaign: &campaign.id,
                variant: &message.id,
                message_id: &message_id,
                token: &device.token,
            };
            let built = payload::request(device.platform, &rendered, &message.push, &to, now_ms);
            DeviceRequest { device: device.clone(), message_id, built }
        })
        .collect();
    Ok((rendered, requests))
}

/// `campaign` rendered for `user` with `profile` and the user's `devices`, every variant.
pub fn preview(
    campaign: &Campaign,
    user: &str,
    profile: &Properties,
    devices: &[Device],
    now_ms: i64,
) -> Preview {
    let mut shown: Vec<Device> = devices
        .iter()
        .filter(|d| campaign.options.platforms.contains(&d.platform))
        .cloned()
        .collect();
    for platform in &campaign.options.platforms {
        if !shown.iter().any(|d| d.platform == *platform) {
            shown.push(Device {
                device_id: String::new(),
                platform: *platform,
                token: NO_DEVICE_TOKEN.into(),
                app_version: None,
                os_version: None,
                make: None,
                model: None,
                sdk_version: None,
            });
        }
    }
    let message_id = |d: &Device| payload::message_id(&campaign.id, "preview", user, &d.device_id);
    let variants = (0..campaign.what.len())
        .map(|variant| {
            let id = campaign.what[variant].id.clone();
            match render_for_devices(campaign, variant, profile, &shown, message_id, now_ms) {
                Ok((rendered, requests)) => VariantPreview {
                    variant: id,
                    texts: Some(texts(rendered)),
                    error: None,
                    requests: requests.into_iter().map(request_preview).collect(),
                },
                Err(error) => VariantPreview {
                    variant: id,
                    texts: None,
                    error: Some(error),
                    requests: vec![],
                },
            }
        })
        .collect();
    Preview { campaign_id: campaign.id.clone(), user_id: user.to_string(), variants }
}

fn texts(rendered: RenderedMessage) -> Texts {
    Texts {
        title: rendered.title,
        body: rendered.body,
        subtitle: rendered.subtitle,
        deep_link: rendered.deep_link,
        image_url: rendered.image_url,
    }
}

fn request_preview(request: DeviceRequest) -> RequestPreview {
    let device_id = Some(request.device.device_id).filter(|id| !id.is_empty());
    let platform = request.device.platform;
    let limit = MAX_PAYLOAD_BYTES;
    match request.built {
        Ok((body, headers)) => RequestPreview {
            device_id,
            platform,
            bytes: body.len(),
            limit,
            payload: Some(body),
            headers,
            error: None,
        },
        Err(error) => {
            let PayloadError::TooLarge { bytes, .. } = error;
            RequestPreview {
                device_id,
                platform,
                bytes,
                limit,
                payload: None,
                headers: BTreeMap::new(),
                error: Some(error.to_string()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{campaign::parse_campaign, model::PropertyValue};

    fn campaign(body: &str) -> Campaign {
        let yaml = format!(
            "id: c1\napp: shop\nname: Sale\nwhen:\n  event: Added To Cart\nwhat:\n  \
             variants:\n    - id: A\n      title: \"Hi {{{{ profile.first_name }}}}\"\n      \
             body: \"{body}\"\n    - id: B\n      title: Other\n      body: plain\n"
        );
        parse_campaign(&yaml, "c1.yaml").unwrap()
    }

    fn device(id: &str, platform: Platform) -> Device {
        Device {
            device_id: id.into(),
            platform,
            token: format!("tok-{id}"),
            app_version: None,
            os_version: None,
            make: None,
            model: None,
            sdk_version: None,
        }
    }

    fn ana() -> Properties {
        Properties::from([("first_name".into(), PropertyValue::String("Ana".into()))])
    }

    #[test]
    fn every_variant_for_every_device_as_the_senders_would_send_it() {
        let devices = [device("i1", Platform::Ios), device("a1", Platform::Android)];
        let preview = preview(&campaign("Your cart"), "u1", &ana(), &devices, 0);
        assert_eq!(preview.variants.len(), 2);
        let a = &preview.variants[0];
        assert_eq!(a.texts.as_ref().unwrap().title, "Hi Ana");
        let ios: serde_json::Value =
            serde_json::from_str(a.requests[0].payload.as_deref().unwrap()).unwrap();
        assert_eq!(ios["aps"]["alert"]["title"], "Hi Ana");
        assert_eq!(a.requests[0].headers["apns-push-type"], "alert");
        let android: serde_json::Value =
            serde_json::from_str(a.requests[1].payload.as_deref().unwrap()).unwrap();
        assert_eq!(android["message"]["token"], "tok-a1");
        assert_eq!(android["message"]["notification"]["body"], "Your cart");
        assert_eq!(a.requests[1].bytes, a.requests[1].payload.as_ref().unwrap().len());
        assert_eq!(preview.variants[1].texts.as_ref().unwrap().title, "Other");
    }

    #[test]
    fn a_payload_over_4_kb_is_flagged_with_its_size() {
        let preview = preview(&campaign(&"x".repeat(5000)), "u1", &ana(), &[], 0);
        let requests = &preview.variants[0].requests;
        assert_eq!(requests.len(), 2, "one placeholder per platform: {requests:?}");
        for request in requests {
            assert!(request.bytes > 5000 && request.payload.is_none(), "{request:?}");
            assert!(request.error.as_deref().unwrap().contains("the limit is 4096"));
        }
        assert!(preview.variants[1].requests.iter().all(|r| r.error.is_none()));
    }

    #[test]
    fn a_template_that_does_not_render_for_the_user_says_why() {
        let preview = preview(&campaign("Cart"), "u1", &Properties::new(), &[], 0);
        let a = &preview.variants[0];
        assert!(a.texts.is_none() && a.requests.is_empty());
        assert_eq!(
            a.error.as_deref(),
            Some("title: missing template variable profile.first_name (no default)")
        );
        assert!(preview.variants[1].error.is_none());
    }
}
