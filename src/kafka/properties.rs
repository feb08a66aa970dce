//! Java-style properties files of librdkafka settings (`key=value` a line, `#` or `!`
//! comments), as `deploy/kafka-local client-config` writes them and as Kafka's own tools
//! read them. Errors name the file and line.

use super::KafkaConfigError;
use std::path::Path;

/// Reads `key=value` pairs in file order.
pub fn parse_properties(path: &Path) -> Result<Vec<(String, String)>, KafkaConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| KafkaConfigError::Read { file: path.to_path_buf(), source })?;
    parse(path, &text)
}

fn parse(path: &Path, text: &str) -> Result<Vec<(String, String)>, KafkaConfigError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
            continue;
        }
        let Some((k, v)) = line.split_once('=').or_else(|| line.split_once(':')) else {
            return Err(KafkaConfigError::Syntax { file: path.to_path_buf(), line: i + 1, found: redact_line(line) });
        };
        let k = k.trim();
        if k.is_empty() {
            return Err(KafkaConfigError::Syntax { file: path.to_path_buf(), line: i + 1, found: redact_line(line) });
        }
        out.push((k.to_string(), v.trim().to_string()));
    }
    Ok(out)
}

/// A line shown in an error: only its first word, in case it holds a secret.
fn redact_line(line: &str) -> String {
    match line.split_whitespace().next() {
        Some(w) if w.len() < line.len() => format!("{w} ..."),
        _ => line.chars().take(40).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pairs_and_skips_comments() {
        let got = parse(Path::new("f"), "# c\n! c\n\nsecurity.protocol=SASL_SSL\n sasl.username = ada \nsasl.password=a=b\n").unwrap();
        assert_eq!(got, vec![
            ("security.protocol".into(), "SASL_SSL".into()),
            ("sasl.username".into(), "ada".into()),
            ("sasl.password".into(), "a=b".into()),
        ]);
    }

    #[test]
    fn a_line_without_a_separator_names_the_file_and_line() {
        let err = parse(Path::new("client.properties"), "a=b\n\nnot a pair\n").unwrap_err();
        assert_eq!(err.to_string(), "client.properties:3: expected `key=value`, found \"not ...\"");
    }
}
