//! The UEA/UCR `.ts` time-series classification format, read as aeon's
//! `load_from_ts_file` and sktime's `load_from_tsfile` read it, but refusing with a
//! line number much of what they let through (headers the data contradicts, empty channels).
//!
//! A file is a header of `@key value` lines ending in `@data`, then one case per line:
//! channels separated by `:`, the values of a channel by `,`, the class label last,
//! as in `1.0,2.5,?:0.3,0.1,0.2:walk`. Blank lines and `#` comment lines may appear
//! anywhere. Header keys are case-insensitive: `@problemName`, `@timeStamps`,
//! `@missing`, `@univariate`, `@equalLength`, `@seriesLength`, `@dimension(s)`,
//! `@classLabel true <labels…>`, `@targetLabel`, `@data`; other keys are ignored, as
//! aeon ignores them. Labels in the data are matched to the declared ones ignoring
//! case, because aeon and sktime lowercase whole lines before comparing.
//!
//! Series keep the length they have: nothing is resampled or padded. Cases may differ
//! in length (unless `@equalLength true`), but the channels of one case may not, since
//! a case is one `[len, channels]` matrix (aeon refuses this too).
//!
//! # Missing values
//!
//! `?` and `NaN` (any case, any sign) mark a missing value, whatever `@missing` says.
//! Each is filled within its own channel of its own case: a gap between two present
//! values is interpolated linearly between them; a gap at the start or the end takes
//! the nearest present value. A channel with no present value at all is an error,
//! because there is nothing to fill it from.
//!
//! # Not supported
//!
//! Timestamped data (`@timeStamps true`) and regression targets (`@targetLabel true`,
//! `@classLabel false`) are refused with a message that says so.
//!
//! # Limits
//!
//! [`read_ts`] refuses files over 1 GiB before reading them. [`parse_ts`] allocates a
//! small multiple of the text's size and never trusts a size the header declares.

use crate::error::{Error, Result};
use std::collections::HashMap;
use std::path::Path;

/// Largest file `read_ts` reads: far above the bundled files (under 1 MB), low enough
/// that a wrong path (a disk image, a log) fails at once instead of exhausting memory.
const MAX_FILE_BYTES: u64 = 1 << 30;

/// Longest piece of a file quoted in an error, so that garbage cannot flood a message.
const MAX_QUOTE_CHARS: usize = 40;

/// One labelled case: `values` is time-major `[len, channels]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// The values, `[len, channels]`: step `t` of channel `c` is `values[t * channels + c]`.
    pub values: Vec<f32>,
    /// Number of time steps.
    pub len: usize,
    /// Class id: an index into [`TsDataset::labels`].
    pub label: usize,
}

/// A `.ts` file: problem name, channel count, declared class labels (index = label id), cases in file order.
#[derive(Clone, Debug, PartialEq)]
pub struct TsDataset {
    /// The `@problemName` value; empty when the header has none.
    pub problem: String,
    /// Channels per time step, the same in every case.
    pub channels: usize,
    /// The labels of `@classLabel` in declared order; a case's `label` indexes this.
    pub labels: Vec<String>,
    /// The cases in file order.
    pub cases: Vec<Series>,
}

impl TsDataset {
    /// Shortest and longest series length; `(0, 0)` when there are no cases.
    pub fn len_range(&self) -> (usize, usize) {
        let mut lens = self.cases.iter().map(|s| s.len);
        let Some(first) = lens.next() else {
            return (0, 0);
        };
        lens.fold((first, first), |(lo, hi), n| (lo.min(n), hi.max(n)))
    }
}

/// Reads a `.ts` file (errors name the file and line).
pub fn read_ts(path: &Path) -> Result<TsDataset> {
    let text = super::read_bounded_utf8(path, MAX_FILE_BYTES, "a .ts file")?;
    parse_ts(&text, &path.display().to_string())
}

/// Parses `.ts` text; `source` names it in errors ("{source}:{line}: what is wrong; what to do").
pub fn parse_ts(text: &str, source: &str) -> Result<TsDataset> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let at = |line: usize, msg: String| Error::Input(format!("{source}:{line}: {msg}"));
    // Line numbers count every line, so they match what an editor shows.
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'));

    let mut header = Header::parse(&mut lines).map_err(|(line, msg)| at(line, msg))?;
    let Some(data_line) = header.data_line else {
        return Err(at(
            text.lines().count().max(1),
            "the file ends without an `@data` line; end the header with `@data`, then give one case per line".into(),
        ));
    };
    let Some(labels) = header.labels.take() else {
        return Err(at(
            data_line,
            "no `@classLabel true <labels…>` line before `@data`; declare the class labels".into(),
        ));
    };
    let label_ids: HashMap<String, usize> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (l.to_lowercase(), i))
        .collect();

    let mut reader = CaseReader {
        header: &header,
        label_ids: &label_ids,
        channels: None,
        length: None,
        scratch: Vec::new(),
    };
    let mut cases = Vec::new();
    for (line, text) in lines {
        cases.push(reader.case(text).map_err(|msg| at(line, msg))?);
    }
    let Some(channels) = reader.channels else {
        return Err(at(
            data_line,
            "no cases follow `@data`; give one case per line after it".into(),
        ));
    };
    Ok(TsDataset {
        problem: header.problem,
        channels,
        labels,
        cases,
    })
}

/// What the header declares; each value with the line that declared it, for messages.
#[derive(Default)]
struct Header {
    problem: String,
    labels: Option<Vec<String>>,
    univariate: Option<(bool, usize)>,
    equal_length: Option<(bool, usize)>,
    series_length: Option<(usize, usize)>,
    dimensions: Option<(usize, usize)>,
    data_line: Option<usize>,
}

/// An error found at a line: the line number and what is wrong.
type LineError = (usize, String);

impl Header {
    /// Reads header lines up to and including `@data`; leaves `lines` at the first case.
    fn parse<'a>(
        lines: &mut impl Iterator<Item = (usize, &'a str)>,
    ) -> std::result::Result<Self, LineError> {
        let mut h = Header::default();
        for (n, line) in lines {
            let err = |msg: String| (n, msg);
            let Some(key) = line
                .split_whitespace()
                .next()
                .filter(|k| k.starts_with('@'))
            else {
                return Err(err(format!(
                    "`{}` comes before `@data`; the header (`@` lines) must end with `@data` before any case",
                    quote(line)
                )));
            };
            let args: Vec<&str> = line.split_whitespace().skip(1).collect();
            // `line` is trimmed, so it starts with `key`.
            let rest = line[key.len()..].trim();
            match key.to_ascii_lowercase().as_str() {
                "@data" => {
                    if !args.is_empty() {
                        return Err(err(
                            "`@data` takes no value; put the cases on the lines after it".into(),
                        ));
                    }
                    h.data_line = Some(n);
                    return Ok(h);
                }
                "@problemname" => {
                    if rest.is_empty() {
                        return Err(err("`@problemName` needs a name after it".into()));
                    }
                    h.problem = rest.to_string();
                }
                "@timestamps" => {
                    let timestamps = boolean(key, &args).map_err(err)?;
                    if timestamps {
                        return Err(err(
                            "`@timeStamps true` is not supported; give the values without timestamps (`@timeStamps false`)".into(),
                        ));
                    }
                }
                // Missing values are filled whatever this says (see the module doc).
                "@missing" => {
                    boolean(key, &args).map_err(err)?;
                }
                "@univariate" => h.univariate = Some((boolean(key, &args).map_err(err)?, n)),
                "@equallength" => h.equal_length = Some((boolean(key, &args).map_err(err)?, n)),
                "@serieslength" => h.series_length = Some((count(key, &args).map_err(err)?, n)),
                "@dimension" | "@dimensions" => {
                    h.dimensions = Some((count(key, &args).map_err(err)?, n))
                }
                "@classlabel" => h.labels = Some(class_labels(&args).map_err(err)?),
                "@targetlabel" => {
                    let regression = boolean(key, &args).map_err(err)?;
                    if regression {
                        return Err(err(
                            "`@targetLabel true` declares a regression problem, which is not supported; only classification (`@classLabel true <labels…>`) is".into(),
                        ));
                    }
                }
                _ => {}
            }
        }
        Ok(h)
    }
}

/// The one `true`/`false` value of a boolean header key.
fn boolean(key: &str, args: &[&str]) -> std::result::Result<bool, String> {
    match args {
        [v] if v.eq_ignore_ascii_case("true") => Ok(true),
        [v] if v.eq_ignore_ascii_case("false") => Ok(false),
        _ => Err(format!("`{key}` needs one value, `true` or `false`")),
    }
}

/// The one positive integer value of a header key.
fn count(key: &str, args: &[&str]) -> std::result::Result<usize, String> {
    match args {
        [v] => match v.parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!(
                "`{key}` needs a positive whole number, not `{}`",
                quote(v)
            )),
        },
        _ => Err(format!("`{key}` needs one value, a positive whole number")),
    }
}

/// The labels of `@classLabel true <labels…>`, refusing `false` and duplicates.
fn class_labels(args: &[&str]) -> std::result::Result<Vec<String>, String> {
    match args.first() {
        Some(v) if v.eq_ignore_ascii_case("true") => {}
        Some(v) if v.eq_ignore_ascii_case("false") => {
            return Err("`@classLabel false` (no class labels, e.g. a regression problem) is not supported; declare the classes with `@classLabel true <labels…>`".into());
        }
        _ => {
            return Err(
                "`@classLabel` needs `true` and the labels: `@classLabel true <labels…>`".into(),
            )
        }
    }
    let labels = &args[1..];
    if labels.is_empty() {
        return Err(
            "`@classLabel true` lists no labels; write them after it, separated by spaces".into(),
        );
    }
    let mut seen = HashMap::new();
    for (i, l) in labels.iter().enumerate() {
        if let Some(j) = seen.insert(l.to_lowercase(), i) {
            return Err(format!(
                "labels {} and {} of `@classLabel` are both `{}` (ignoring case); each class must be listed once",
                j + 1,
                i + 1,
                quote(l)
            ));
        }
    }
    Ok(labels.iter().map(|l| l.to_string()).collect())
}

/// Reads data lines, checking each against the header and the cases before it.
struct CaseReader<'a> {
    header: &'a Header,
    /// Lowercased label to label id.
    label_ids: &'a HashMap<String, usize>,
    /// Channel count, set by the first case.
    channels: Option<usize>,
    /// Length every case must have under `@equalLength true`, once known.
    length: Option<usize>,
    /// Channel-major `[channels, len]` values of the case being read; reused.
    scratch: Vec<f32>,
}

impl CaseReader<'_> {
    /// One data line as a case, or what is wrong with it.
    fn case(&mut self, line: &str) -> std::result::Result<Series, String> {
        if line.starts_with('@') {
            return Err(format!(
                "header line `{}` after `@data`; move it above `@data`",
                quote(line)
            ));
        }
        let no_label = "a case with no class label; a case is `values:…:values:label`";
        let Some((series, label)) = line.rsplit_once(':') else {
            return Err(format!("{no_label} (this line has no `:`)"));
        };
        let label = label.trim();
        if label.is_empty() {
            return Err(format!("{no_label} (nothing after the last `:`)"));
        }
        let channels = series.split(':').count();
        self.check_channels(channels)?;
        let Some(&label) = self.label_ids.get(&label.to_lowercase()) else {
            let hint = if label.contains(',') {
                " (it looks like values: is the label missing?)"
            } else {
                ""
            };
            return Err(format!(
                "class label `{}` is not declared in `@classLabel`{hint}; add it there or fix the case",
                quote(label)
            ));
        };

        self.scratch.clear();
        let mut len = 0;
        for (c, channel) in series.split(':').enumerate() {
            let start = self.scratch.len();
            read_channel(channel, c, &mut self.scratch)?;
            let n = self.scratch.len() - start;
            if c == 0 {
                len = n;
            } else if n != len {
                return Err(format!(
                    "channel {} has {n} values but channel 1 has {len}; all channels of one case must have the same length",
                    c + 1
                ));
            }
            fill_missing(&mut self.scratch[start..]).map_err(|()| {
                format!(
                    "channel {} has only missing values (`?`/`NaN`), so there is nothing to fill them from; give at least one value",
                    c + 1
                )
            })?;
        }
        self.check_length(len)?;

        let mut values = Vec::with_capacity(self.scratch.len());
        for t in 0..len {
            values.extend((0..channels).map(|c| self.scratch[c * len + t]));
        }
        Ok(Series { values, len, label })
    }

    /// Checks a case's channel count against the first case and the header.
    fn check_channels(&mut self, channels: usize) -> std::result::Result<(), String> {
        match self.channels {
            None => self.channels = Some(channels),
            Some(first) if first != channels => {
                return Err(format!(
                    "this case has {channels} channels but the first case has {first}; every case must have the same channels"
                ));
            }
            Some(_) => {}
        }
        if let Some((true, line)) = self.header.univariate {
            if channels > 1 {
                return Err(format!(
                    "this case has {channels} channels but `@univariate true` (line {line}) allows one; fix the header or the case"
                ));
            }
        }
        if let Some((dims, line)) = self.header.dimensions {
            if dims != channels {
                return Err(format!(
                    "this case has {channels} channels but `@dimensions {dims}` (line {line}) says {dims}; fix the header or the case"
                ));
            }
        }
        Ok(())
    }

    /// Under `@equalLength true`, checks a case's length against `@seriesLength` or the first case.
    fn check_length(&mut self, len: usize) -> std::result::Result<(), String> {
        let Some((true, eq_line)) = self.header.equal_length else {
            return Ok(());
        };
        if let Some((want, line)) = self.header.series_length {
            if len != want {
                return Err(format!(
                    "this case has length {len} but `@equalLength true` (line {eq_line}) with `@seriesLength {want}` (line {line}) says {want}; fix the header or the case"
                ));
            }
        }
        match self.length {
            None => self.length = Some(len),
            Some(first) if first != len => {
                return Err(format!(
                    "this case has length {len} but the first case has {first}, and `@equalLength true` (line {eq_line}) says all are equal; fix the header or the case"
                ));
            }
            Some(_) => {}
        }
        Ok(())
    }
}

/// Appends one channel's values to `out`, missing ones as NaN (no parsed value is NaN).
fn read_channel(channel: &str, c: usize, out: &mut Vec<f32>) -> std::result::Result<(), String> {
    if channel.trim().is_empty() {
        return Err(format!(
            "channel {} is empty; give at least one value (`?` marks a missing one)",
            c + 1
        ));
    }
    for (i, token) in channel.split(',').enumerate() {
        let token = token.trim();
        let bad = |what: &str| {
            format!(
                "value {} of channel {} {what}; write a decimal number, or `?` for a missing value",
                i + 1,
                c + 1
            )
        };
        if token == "?" {
            out.push(f32::NAN);
            continue;
        }
        if token.is_empty() {
            return Err(bad("is empty"));
        }
        match token.parse::<f32>() {
            // Rust reads "nan", "-NaN" and the like as NaN: all mark a missing value.
            Ok(v) if v.is_nan() => out.push(f32::NAN),
            Ok(v) if v.is_finite() => out.push(v),
            Ok(_) => {
                return Err(bad(&format!(
                    "`{}` is infinite or too large for f32",
                    quote(token)
                )))
            }
            Err(_) => return Err(bad(&format!("`{}` is not a number", quote(token)))),
        }
    }
    Ok(())
}

/// Fills NaN gaps in place: linear between the nearest present values, edges take the
/// nearest one. Fails when nothing is present.
fn fill_missing(v: &mut [f32]) -> std::result::Result<(), ()> {
    let Some(first) = v.iter().position(|x| !x.is_nan()) else {
        return Err(());
    };
    let first_value = v[first];
    v[..first].fill(first_value);
    let mut prev = first;
    for i in first + 1..v.len() {
        if v[i].is_nan() {
            continue;
        }
        if i > prev + 1 {
            let (a, b) = (f64::from(v[prev]), f64::from(v[i]));
            let span = (i - prev) as f64;
            for (j, x) in v[prev + 1..i].iter_mut().enumerate() {
                *x = (a + (b - a) * (j + 1) as f64 / span) as f32;
            }
        }
        prev = i;
    }
    let last_value = v[prev];
    v[prev + 1..].fill(last_value);
    Ok(())
}

/// `s`, shortened for an error message.
fn quote(s: &str) -> String {
    if s.chars().count() <= MAX_QUOTE_CHARS {
        s.to_string()
    } else {
        let head: String = s.chars().take(MAX_QUOTE_CHARS).collect();
        format!("{head}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "@problemName toy\n@timeStamps false\n@classLabel true a b\n@data\n";

    /// Parses `text` as `t.ts`; the error message when it fails.
    fn err(text: &str) -> String {
        match parse_ts(text, "t.ts") {
            Ok(d) => panic!("expected an error, parsed {d:?}"),
            Err(e) => e.to_string(),
        }
    }

    /// Asserts that `msg` names line `line` of `t.ts` and contains `what`.
    fn assert_err(text: &str, line: usize, what: &str) {
        let msg = err(text);
        assert!(
            msg.contains(&format!("t.ts:{line}: ")),
            "message should name line {line}: {msg}"
        );
        assert!(msg.contains(what), "message should say {what:?}: {msg}");
    }

    /// The one case of a file of `HEADER` then `case`.
    fn one_case(case: &str) -> Series {
        let d = parse_ts(&format!("{HEADER}{case}\n"), "t.ts").unwrap();
        d.cases.into_iter().next().unwrap()
    }

    #[test]
    fn reads_header_and_cases_time_major() {
        let text = "# a comment\n\n@PROBLEMNAME Toy Problem\n@TimeStamps FALSE\n@missing false\n\
                    @univariate false\n@dimensions 2\n@equalLength false\n@classLabel TRUE up down\n\
                    @data\n# comment among cases\n1,2,3:4,5,6:down\n\n7:8:UP\n";
        let d = parse_ts(text, "t.ts").unwrap();
        assert_eq!(d.problem, "Toy Problem");
        assert_eq!(d.channels, 2);
        assert_eq!(d.labels, ["up", "down"]);
        assert_eq!(d.cases.len(), 2);
        assert_eq!(
            d.cases[0],
            Series {
                values: vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0],
                len: 3,
                label: 1
            }
        );
        // Unequal lengths are kept; labels match ignoring case.
        assert_eq!(
            d.cases[1],
            Series {
                values: vec![7.0, 8.0],
                len: 1,
                label: 0
            }
        );
        assert_eq!(d.len_range(), (1, 3));
    }

    #[test]
    fn crlf_bom_spaces_and_exponents() {
        let text = "\u{feff}@classLabel true x\r\n@data\r\n 1.5e2 , -2E-1 ,+3. : x \r\n";
        let d = parse_ts(text, "t.ts").unwrap();
        assert_eq!(d.problem, "");
        assert_eq!(d.cases[0].values, [150.0, -0.2, 3.0]);
    }

    #[test]
    fn missing_values_interpolate_inside_and_copy_at_edges() {
        let s = one_case("?,1,?,?,4,NaN,nan:a");
        assert_eq!(s.values, [1.0, 1.0, 2.0, 3.0, 4.0, 4.0, 4.0]);
        let s = one_case("0,?,1,-nan,?,?,-1:a");
        assert_eq!(s.values, [0.0, 0.5, 1.0, 0.5, 0.0, -0.5, -1.0]);
        // Channels are filled independently.
        let s = one_case("?,2:10,?:b");
        assert_eq!(s.values, [2.0, 10.0, 2.0, 10.0]);
        assert_eq!(s.label, 1);
    }

    #[test]
    fn a_channel_with_no_value_is_an_error() {
        assert_err(
            &format!("{HEADER}1,2:3,4:a\n1,2:?,NaN:a\n"),
            6,
            "channel 2 has only missing values",
        );
    }

    #[test]
    fn channel_count_must_not_change() {
        assert_err(
            &format!("{HEADER}1,2:3,4:a\n\n1,2:b\n"),
            7,
            "1 channels but the first case has 2",
        );
    }

    #[test]
    fn channels_of_one_case_must_have_equal_length() {
        assert_err(
            &format!("{HEADER}1,2,3:4,5:a\n"),
            5,
            "channel 2 has 2 values but channel 1 has 3",
        );
    }

    #[test]
    fn labels_must_be_declared() {
        assert_err(
            &format!("{HEADER}1,2:a\n1,2:c\n"),
            6,
            "class label `c` is not declared",
        );
    }

    #[test]
    fn a_case_must_have_a_label() {
        assert_err(&format!("{HEADER}1,2,3\n"), 5, "no class label");
        assert_err(&format!("{HEADER}1,2,3:\n"), 5, "no class label");
        assert_err(&format!("{HEADER}1,2:3,4\n"), 5, "is the label missing?");
    }

    #[test]
    fn regression_and_timestamps_are_refused() {
        assert_err("@classLabel false\n@data\n1,2:3.5\n", 1, "not supported");
        assert_err(
            "@problemName r\n@targetLabel true\n@data\n1,2:3.5\n",
            2,
            "regression problem, which is not supported",
        );
        assert_err(
            "@timeStamps true\n@classLabel true a\n@data\n(0,1),(1,2):a\n",
            1,
            "`@timeStamps true` is not supported",
        );
    }

    #[test]
    fn values_must_be_finite_numbers() {
        assert_err(
            &format!("{HEADER}1,x2,3:a\n"),
            5,
            "value 2 of channel 1 `x2` is not a number",
        );
        assert_err(
            &format!("{HEADER}1,,3:a\n"),
            5,
            "value 2 of channel 1 is empty",
        );
        assert_err(&format!("{HEADER}1,inf:a\n"), 5, "`inf` is infinite");
        assert_err(
            &format!("{HEADER}1:-1e39:a\n"),
            5,
            "value 1 of channel 2 `-1e39` is infinite",
        );
    }

    #[test]
    fn long_garbage_is_quoted_short() {
        let msg = err(&format!("{HEADER}{}:a\n", "z".repeat(10_000)));
        assert!(msg.len() < 300, "{msg}");
    }

    #[test]
    fn empty_series_is_an_error() {
        assert_err(&format!("{HEADER} :a\n"), 5, "channel 1 is empty");
        assert_err(&format!("{HEADER}1,2::a\n"), 5, "channel 2 is empty");
    }

    #[test]
    fn data_section_must_exist_and_hold_cases() {
        assert_err("@classLabel true a\n\n", 2, "without an `@data` line");
        assert_err("", 1, "without an `@data` line");
        assert_err(
            &format!("{HEADER}# only a comment\n"),
            4,
            "no cases follow `@data`",
        );
        assert_err(
            "@classLabel true a\n1,2:a\n@data\n",
            2,
            "comes before `@data`",
        );
        assert_err(
            &format!("{HEADER}1:a\n@univariate true\n"),
            6,
            "after `@data`",
        );
        assert_err(
            "@classLabel true a\n@data 3\n1:a\n",
            2,
            "`@data` takes no value",
        );
    }

    #[test]
    fn class_labels_must_be_declared_once() {
        assert_err("@problemName p\n@data\n1:a\n", 2, "no `@classLabel true");
        assert_err("@classLabel true\n@data\n1:a\n", 1, "lists no labels");
        assert_err("@classLabel true a b A\n@data\n1:a\n", 1, "labels 1 and 3");
        assert_err(
            "@classLabel yes a\n@data\n1:a\n",
            1,
            "needs `true` and the labels",
        );
    }

    #[test]
    fn univariate_allows_one_channel() {
        assert_err(
            "@univariate true\n@classLabel true a\n@data\n1,2:3,4:a\n",
            4,
            "`@univariate true` (line 1) allows one",
        );
    }

    #[test]
    fn dimensions_must_match() {
        assert_err(
            "@dimension 3\n@classLabel true a\n@data\n1,2:3,4:a\n",
            4,
            "`@dimensions 3` (line 1)",
        );
    }

    #[test]
    fn equal_length_is_enforced() {
        let head = "@equalLength true\n@seriesLength 3\n@classLabel true a\n@data\n";
        assert_err(
            &format!("{head}1,2,3:a\n1,2:a\n"),
            6,
            "`@seriesLength 3` (line 2) says 3",
        );
        let head = "@equalLength true\n@classLabel true a\n@data\n";
        assert_err(
            &format!("{head}1,2,3:a\n1,2:a\n"),
            5,
            "the first case has 3",
        );
        // Without `@equalLength true`, `@seriesLength` is not a promise (aeon ignores it).
        let d = parse_ts(
            "@seriesLength 3\n@classLabel true a\n@data\n1,2:a\n",
            "t.ts",
        )
        .unwrap();
        assert_eq!(d.len_range(), (2, 2));
    }

    #[test]
    fn header_values_are_checked() {
        assert_err(
            "@missing maybe\n",
            1,
            "`@missing` needs one value, `true` or `false`",
        );
        assert_err("@equalLength\n", 1, "needs one value");
        assert_err("@seriesLength -3\n", 1, "positive whole number, not `-3`");
        assert_err("@dimensions 0\n", 1, "positive whole number");
        assert_err("@problemName\n", 1, "needs a name");
    }

    #[test]
    fn unknown_header_keys_are_ignored() {
        let d = parse_ts("@frequency 10\n@classLabel true a\n@data\n1:a\n", "t.ts").unwrap();
        assert_eq!(d.cases.len(), 1);
    }

    #[test]
    fn len_range_of_no_cases() {
        let d = TsDataset {
            problem: String::new(),
            channels: 1,
            labels: vec![],
            cases: vec![],
        };
        assert_eq!(d.len_range(), (0, 0));
    }

    #[test]
    fn read_ts_names_the_file_and_refuses_what_it_cannot_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.ts");
        std::fs::write(&path, "@classLabel true a\n@data\n1,2:a\n1:b\n").unwrap();
        let msg = read_ts(&path).unwrap_err().to_string();
        assert!(msg.contains(&format!("{}:4: ", path.display())), "{msg}");

        std::fs::write(&path, b"@classLabel true a\n@data\n1,\xff:a\n").unwrap();
        let msg = read_ts(&path).unwrap_err().to_string();
        assert!(msg.contains("x.ts:3: not valid UTF-8"), "{msg}");

        // A sparse file: the size alone must stop the read.
        let big = dir.path().join("big.ts");
        std::fs::File::create(&big)
            .unwrap()
            .set_len(MAX_FILE_BYTES + 1)
            .unwrap();
        let msg = read_ts(&big).unwrap_err().to_string();
        assert!(msg.contains("limit of a .ts file"), "{msg}");

        let missing = dir.path().join("none.ts");
        assert!(matches!(read_ts(&missing), Err(Error::Io { .. })));
    }
}
