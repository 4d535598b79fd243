//! Entry points for the fuzz targets in `fuzz/` that reach the controller's parsers.

/// Parses arbitrary bytes as every API request body and as a worker filter; must never panic.
pub fn api_body(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        crate::http::parse_every_body(text);
    }
}

#[cfg(test)]
mod tests {
    /// The committed seeds of the `api_body` target are bodies the API accepts, so the fuzzer
    /// starts from inputs that reach past the JSON syntax.
    #[test]
    fn committed_api_body_seeds_are_accepted_bodies() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus/api_body");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            assert!(
                crate::http::accepted_as(&name, &text),
                "{name} is not accepted as the body it is named for"
            );
            super::api_body(text.as_bytes());
            seen += 1;
        }
        assert!(seen >= 9, "only {seen} seeds in {dir}");
    }
}
