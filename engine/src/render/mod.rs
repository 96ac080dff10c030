//! Liquid templates of message texts: checked when a campaign is validated, rendered per user.

use std::sync::OnceLock;

/// The Liquid parser with the standard filters (`default`, `upcase`, …).
fn parser() -> &'static liquid::Parser {
    static PARSER: OnceLock<liquid::Parser> = OnceLock::new();
    PARSER.get_or_init(|| {
        liquid::ParserBuilder::with_stdlib().build().expect("the standard Liquid library builds")
    })
}

/// Checks that `source` parses as a Liquid template; the error says what and where.
pub fn check_template(source: &str) -> Result<(), String> {
    parser().parse(source).map(|_| ()).map_err(|e| e.to_string().trim().replace('\n', " "))
}
