//! App settings files (`--app-config`): every invalid value is reported with its field path and
//! reason, all of them in one pass.

use herald_engine::{campaign::FieldError, settings::Settings};

fn errors(text: &str) -> Vec<(String, String)> {
    let errors = Settings::parse(text, "apps.yaml").unwrap_err();
    assert_eq!(errors.source, "apps.yaml");
    errors.errors.into_iter().map(|FieldError { path, reason }| (path, reason)).collect()
}

#[test]
fn invalid_app_settings_name_each_field_and_reason() {
    let found = errors(
        "apps:\n  shop:\n    caps: { per_day: -1, per_month: 3 }\n    min_gap: -1h\n    timezone: Mars/Olympus\n    throttle: { max: 0, per: 9999999999999d }\n",
    );
    let paths: Vec<&str> = found.iter().map(|(path, _)| path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "apps.shop.caps.per_month",
            "apps.shop.caps.per_day",
            "apps.shop.min_gap",
            "apps.shop.timezone",
            "apps.shop.throttle.max",
            "apps.shop.throttle.per",
        ],
        "{found:?}"
    );
    let reason = |path: &str| &found.iter().find(|(p, _)| p == path).unwrap().1;
    assert!(reason("apps.shop.caps.per_month").starts_with("unknown field"));
    assert!(reason("apps.shop.caps.per_day").contains("found -1"));
    assert_eq!(reason("apps.shop.min_gap"), "must be positive");
    assert!(reason("apps.shop.timezone").contains("unknown timezone \"Mars/Olympus\""));
    assert!(reason("apps.shop.throttle.max").contains("found 0"));
    assert!(reason("apps.shop.throttle.per").contains("longer than 3660d"));
}

#[test]
fn a_settings_file_that_is_not_a_mapping_of_apps_is_refused() {
    assert_eq!(errors("apps: [shop]\n"), [("apps".into(), "expected a mapping".into())]);
    assert_eq!(
        errors("apps:\n  shop: 3\n"),
        [("apps.shop".to_string(), "expected a mapping".to_string())]
    );
    assert_eq!(errors("app: {}\n")[0].0, "app");
    assert_eq!(errors("apps: {\n")[0].0, "(document)");
}

#[test]
fn valid_settings_parse() {
    let settings = Settings::parse(
        "apps:\n  shop:\n    caps: { per_day: 2, per_week: 5 }\n    min_gap: 1h\n    timezone: Europe/Paris\n    throttle: { max: 10, per: 1m }\n",
        "apps.yaml",
    )
    .unwrap();
    let shop = settings.app("shop");
    assert_eq!(
        (shop.max_per_day, shop.max_per_week, shop.min_gap_ms),
        (Some(2), Some(5), Some(3_600_000))
    );
    assert_eq!(shop.timezone, chrono_tz::Europe::Paris);
    assert_eq!(shop.throttle.as_ref().map(|t| (t.max, t.per_ms)), Some((10, 60_000)));
    assert_eq!(Settings::parse("", "empty.yaml").unwrap(), Settings::default());
}
