//! What `consentry test` prints, and its JUnit XML report.

use std::fmt::Write as _;

use anyhow::Result;
use quick_xml::Writer;
use quick_xml::events::{BytesDecl, BytesText, Event};

use super::{CaseResult, FileResult};

/// The readable summary: every case, what failed with a diff, and a closing
/// `policies: N passed, N failed` line.
pub fn summary(results: &[FileResult]) -> String {
    let mut out = String::new();
    let mut failed_names = Vec::new();
    let (mut passed, mut failed) = (0usize, 0usize);
    for file in results {
        let name = file.path.display();
        let _ = writeln!(out, "{name}");
        if let Some(e) = &file.error {
            failed += 1;
            failed_names.push(format!("{name} (the file did not run)"));
            let _ = write!(out, "  ERROR {}", indent(e, 8).trim_start());
            continue;
        }
        for case in &file.cases {
            if case.passed() {
                passed += 1;
                let _ = write!(out, "  ok    {}", case.name);
            } else {
                failed += 1;
                failed_names.push(format!("{name}: {}", case.name));
                let _ = write!(out, "  FAIL  {}", case.name);
            }
            match &case.updated {
                Some(Ok(path)) => {
                    let _ = write!(out, " (updated {})", path.display());
                }
                Some(Err(why)) => {
                    let _ = write!(out, " ({why})");
                }
                None => {}
            }
            out.push('\n');
            if !case.passed() {
                out.push_str(&indent(&failure_text(case), 8));
            }
        }
    }
    if !failed_names.is_empty() {
        out.push_str("\nfailures:\n");
        for n in &failed_names {
            let _ = writeln!(out, "  {n}");
        }
    }
    let _ = writeln!(out, "\npolicies: {passed} passed, {failed} failed");
    out
}

/// Every failure of a case, with its details, and the decision that was made.
fn failure_text(case: &CaseResult) -> String {
    let mut out = String::new();
    for f in &case.failures {
        let _ = writeln!(out, "{}", f.message);
        if let Some(detail) = &f.detail {
            out.push_str(&indent(detail, 2));
        }
    }
    if let Some(d) = &case.decision {
        let _ = writeln!(out, "(the decision: {d})");
    }
    out
}

fn indent(text: &str, by: usize) -> String {
    let pad = " ".repeat(by);
    let mut out = String::with_capacity(text.len() + 16);
    for line in text.lines() {
        if line.is_empty() {
            out.push('\n');
        } else {
            let _ = writeln!(out, "{pad}{line}");
        }
    }
    out
}

/// The JUnit XML report: one `testsuite` per file, one `testcase` per case; a file
/// that could not run is one `testcase` with an `error`.
pub fn junit_xml(results: &[FileResult]) -> Result<String> {
    let mut w = Writer::new_with_indent(Vec::new(), b' ', 2);
    w.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))?;
    let count = |f: &FileResult| if f.error.is_some() { 1 } else { f.cases.len() };
    let fails = |f: &FileResult| f.cases.iter().filter(|c| !c.passed()).count();
    let errors = |f: &FileResult| usize::from(f.error.is_some());
    let time = |f: &FileResult| f.cases.iter().map(|c| c.seconds).sum::<f64>();
    let tests: usize = results.iter().map(count).sum();
    let failures: usize = results.iter().map(fails).sum();
    let errs: usize = results.iter().map(errors).sum();
    let total: f64 = results.iter().map(time).sum();
    w.create_element("testsuites")
        .with_attributes([
            ("name", "consentry test"),
            ("tests", &tests.to_string()),
            ("failures", &failures.to_string()),
            ("errors", &errs.to_string()),
            ("time", &format!("{total:.3}")),
        ])
        .write_inner_content(|w| {
            for file in results {
                let name = file.path.display().to_string();
                w.create_element("testsuite")
                    .with_attributes([
                        ("name", name.as_str()),
                        ("tests", &count(file).to_string()),
                        ("failures", &fails(file).to_string()),
                        ("errors", &errors(file).to_string()),
                        ("time", &format!("{:.3}", time(file))),
                    ])
                    .write_inner_content(|w| {
                        if let Some(e) = &file.error {
                            w.create_element("testcase")
                                .with_attributes([
                                    ("name", "(the file)"),
                                    ("classname", name.as_str()),
                                ])
                                .write_inner_content(|w| {
                                    let e = xml_safe(e);
                                    w.create_element("error")
                                        .with_attribute(("message", first_line(&e)))
                                        .write_text_content(BytesText::new(&e))?;
                                    Ok(())
                                })?;
                        }
                        for case in &file.cases {
                            let el = w.create_element("testcase").with_attributes([
                                ("name", case.name.as_str()),
                                ("classname", name.as_str()),
                                ("time", &format!("{:.3}", case.seconds)),
                            ]);
                            if case.passed() {
                                el.write_empty()?;
                                continue;
                            }
                            let text = xml_safe(&failure_text(case));
                            el.write_inner_content(|w| {
                                w.create_element("failure")
                                    .with_attribute(("message", first_line(&text)))
                                    .write_text_content(BytesText::new(&text))?;
                                Ok(())
                            })?;
                        }
                        Ok(())
                    })?;
            }
            Ok(())
        })?;
    let mut xml = String::from_utf8(w.into_inner())?;
    xml.push('\n');
    Ok(xml)
}

/// XML 1.0 has no control characters but tab, newline and carriage return; a body
/// quoted in a diff may hold others.
fn xml_safe(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '\t' | '\n' | '\r' => c,
            c if c < ' ' || c == '\u{fffe}' || c == '\u{ffff}' => '\u{fffd}',
            c => c,
        })
        .collect()
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}
