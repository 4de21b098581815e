//! Speech manifests: one `path<TAB>transcript[<TAB>speaker]` line per utterance (the
//! optional third column names who speaks, for results per speaker).
//!
//! A relative path is relative to the folder that holds the manifest, so a data set
//! folder can be moved as a whole; an absolute path is used as it is. Blank lines
//! (only spaces or tabs) and lines whose first character is `#` are skipped, so a
//! manifest can carry a header comment. The transcript is the second column, with
//! surrounding spaces removed; it must not be empty. A third column, if any, is the
//! speaker (not empty); a fourth is an error. Every listed file must exist when the manifest is read, so that a
//! typo fails before training starts rather than hours into it.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// Largest manifest read: millions of lines fit; a wrong path (an audio file, a disk
/// image) fails at once instead of filling memory.
pub const MAX_MANIFEST_BYTES: u64 = 256 << 20;

/// One utterance of a manifest: its audio file, what is said in it, and where it was listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Utterance {
    /// The audio file, already joined to the manifest's folder when it was relative.
    pub path: PathBuf,
    /// What is said, surrounding spaces removed; never empty.
    pub transcript: String,
    /// 1-based line of the manifest that listed it.
    pub line: usize,
    /// Who speaks (the optional third column).
    pub speaker: Option<String>,
}

/// Reads a manifest (see the module docs); refuses files over [`MAX_MANIFEST_BYTES`],
/// non-UTF-8 text, malformed lines and listed files that do not exist.
pub fn read_manifest(path: &Path) -> Result<Vec<Utterance>> {
    let text = super::read_bounded_utf8(path, MAX_MANIFEST_BYTES, "a manifest")?;
    let base = path.parent().unwrap_or(Path::new(""));
    let utterances = parse_manifest(&text, base, &path.display().to_string())?;
    for u in &utterances {
        if !u.path.is_file() {
            return Err(Error::Input(format!(
                "{}:{}: audio file {} does not exist; paths are relative to the manifest's folder",
                path.display(),
                u.line,
                u.path.display()
            )));
        }
    }
    Ok(utterances)
}

/// Parses manifest text, joining relative paths to `base`, without touching the
/// files; `what` names the text in errors ("{what}:{line}: what is wrong").
pub fn parse_manifest(text: &str, base: &Path, what: &str) -> Result<Vec<Utterance>> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let fail = |line: usize, msg: &str| Error::Input(format!("{what}:{line}: {msg}"));
    let mut utterances = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        if raw.trim_matches([' ', '\t']).is_empty() || raw.starts_with('#') {
            continue;
        }
        let Some((file, transcript)) = raw.split_once('\t') else {
            return Err(fail(
                line,
                "no tab; every line must be `path<TAB>transcript`",
            ));
        };
        let (transcript, speaker) =
            match transcript.split_once('\t') {
                None => (transcript, None),
                Some((_, s)) if s.contains('\t') => return Err(fail(
                    line,
                    "more than two tabs; every line must be `path<TAB>transcript[<TAB>speaker]`",
                )),
                Some((_, s)) if s.trim().is_empty() => {
                    return Err(fail(line, "the speaker (third column) is empty"))
                }
                Some((t, s)) => (t, Some(s.trim().to_string())),
            };
        if file.trim().is_empty() {
            return Err(fail(line, "the path is empty"));
        }
        let transcript = transcript.trim_matches(' ');
        if transcript.is_empty() {
            return Err(fail(
                line,
                "the transcript is empty; write what is said after the tab",
            ));
        }
        utterances.push(Utterance {
            path: base.join(file),
            transcript: transcript.to_string(),
            line,
            speaker,
        });
    }
    if utterances.is_empty() {
        return Err(Error::Input(format!(
            "{what}: no utterances; give one `path<TAB>transcript` per line"
        )));
    }
    Ok(utterances)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_comments_and_blank_lines_and_joins_relative_paths() {
        let text = "# header\n\na.wav\t12 345\r\n  \n/abs/b.wav\t oh \tf3 \n";
        let u = parse_manifest(text, Path::new("/data"), "m.tsv").unwrap();
        assert_eq!(u.len(), 2);
        assert_eq!(u[0].path, Path::new("/data/a.wav"));
        assert_eq!(u[0].transcript, "12 345");
        assert_eq!(u[0].line, 3);
        assert_eq!(u[1].path, Path::new("/abs/b.wav"));
        assert_eq!(u[1].transcript, "oh");
        assert_eq!(u[1].line, 5);
        assert_eq!(
            (u[0].speaker.as_deref(), u[1].speaker.as_deref()),
            (None, Some("f3"))
        );
    }

    #[test]
    fn errors_name_the_line() {
        for (text, line, needle) in [
            ("a.wav\t1\nb.wav 2\n", 2, "no tab"),
            ("a.wav\t  \n", 1, "transcript is empty"),
            ("a.wav\t1\t2\t3\n", 1, "more than two tabs"),
            ("a.wav\t1\t \n", 1, "speaker (third column) is empty"),
            ("\t1\n", 1, "path is empty"),
        ] {
            let e = parse_manifest(text, Path::new("."), "m.tsv")
                .unwrap_err()
                .to_string();
            assert!(e.contains(&format!("m.tsv:{line}: ")), "{e}");
            assert!(e.contains(needle), "{e}");
        }
        let e = parse_manifest("# only\n\n", Path::new("."), "m.tsv").unwrap_err();
        assert!(e.to_string().contains("no utterances"), "{e}");
    }
}
