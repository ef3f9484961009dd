//! The answer stage on real text: segmentation of real documents (Rust Book
//! pages as the toolchain ships them, a Debian PDF, the ingest fixtures),
//! question types picking the unit that holds the answer (those pages and
//! the shared SQuAD dev data), attribution, and abstention on off-topic
//! questions through a real engine.
mod engine_support;

use std::path::{Path, PathBuf};

use engine_support::*;
use futures::StreamExt;
use ragfleet_rag::answer::{attribute, strip_markers, NO_ANSWER};
use ragfleet_rag::eval::{f1_score, max_over_gold, read_squad};
use ragfleet_rag::generate::extractive::{question_type, ExtractiveGenerator, QuestionType};
use ragfleet_rag::generate::segment::{segment, Unit, UnitKind};
use ragfleet_rag::generate::Source;
use ragfleet_rag::ingest::{load_path, LoadOptions};
use ragfleet_rag::{ChatEvent, ChatRequest};

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

fn text_of(rel: &str) -> String {
    let mut docs = load_path(&fixture(rel), &LoadOptions::default());
    docs.remove(0).expect("fixture loads").text
}

fn units_of(rel: &str) -> Vec<Unit> {
    segment(&text_of(rel))
}

fn find<'a>(units: &'a [Unit], needle: &str) -> &'a Unit {
    units
        .iter()
        .find(|u| u.text.contains(needle))
        .unwrap_or_else(|| panic!("no unit holds {needle:?}"))
}

/// The page as one source per ~1,200 characters (as chunks would be).
fn sources_of(rel: &str) -> Vec<Source> {
    let text = text_of(rel);
    let mut out = Vec::new();
    let mut cur = String::new();
    for para in text.split("\n\n") {
        if cur.len() + para.len() > 1200 && !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
        cur.push_str(para);
        cur.push_str("\n\n");
    }
    out.push(cur);
    out.into_iter()
        .enumerate()
        .map(|(i, text)| Source {
            n: i + 1,
            chunk_id: format!("{rel}#{i}"),
            title: String::new(),
            text,
        })
        .collect()
}

fn ask(rel: &str, question: &str) -> String {
    ExtractiveGenerator::new().answer(question, &sources_of(rel), 256)
}

#[test]
fn code_blocks_settings_and_shell_lines_are_units_of_their_own() {
    let u = units_of("answers/ch14-01-release-profiles.html");
    let dev = find(&u, "opt-level = 0");
    assert_eq!(dev.kind, UnitKind::KeyValue);
    assert_eq!(dev.text, "opt-level = 0");
    assert_eq!(find(&u, "opt-level = 3").text, "opt-level = 3");
    assert_eq!(find(&u, "[profile.release]").text, "[profile.release]");
    // The sentence before the code block ends at its colon, whole.
    let intro = find(&u, "here are the default");
    assert_eq!(intro.kind, UnitKind::Sentence);
    assert!(intro.text.ends_with("profiles:"), "{}", intro.text);

    let t = units_of("answers/ch11-02-running-tests.html");
    let line = find(&t, "--test-threads=1");
    assert_eq!(line.kind, UnitKind::CodeLine, "{line:?}");
    assert!(line.text.starts_with("$ cargo test"), "{}", line.text);
}

#[test]
fn a_question_mark_in_code_or_prose_about_code_does_not_end_a_sentence() {
    let u = units_of("answers/ch09-02-recoverable-errors-with-result.html");
    // "the ? operator" stays inside its sentence.
    let s = find(&u, "the ? operator");
    assert!(
        !s.text.ends_with('?') && s.text.split_whitespace().count() > 5,
        "{s:?}"
    );
    for unit in &u {
        assert!(
            !unit.text.ends_with(" ?") && unit.text != "?",
            "split at a lone ?: {unit:?}"
        );
    }
    // Paths and versions are not sentence ends either.
    let io = find(&u, "std::io");
    assert!(!io.text.ends_with("std::"), "{io:?}");
}

#[test]
fn html_list_items_and_tables_stay_separate() {
    let u = units_of("ingest/good/museum.html");
    assert_eq!(find(&u, "Bones").text, "Bones: 221");
    assert_eq!(
        find(&u, "Weight of the skeleton").text,
        "Weight of the skeleton: 4.5 tonnes"
    );
    let m = units_of("ingest/good/guide.md");
    let item = find(&m, "Feed the starter");
    assert_eq!(item.kind, UnitKind::ListItem);
    assert!(!item.text.starts_with('-'));
    assert_eq!(find(&m, "flour      500 g").kind, UnitKind::CodeLine);
}

#[test]
fn pdf_lines_broken_mid_sentence_are_joined() {
    let raw = text_of("answers/shared-mime-info-spec.pdf");
    let u = segment(&raw);
    // Every prose line the PDF broke mid-sentence is inside a longer unit:
    // no sentence unit ends without final punctuation while the next line
    // of the raw text continues it in lower case.
    let lines: Vec<&str> = raw.lines().map(str::trim).collect();
    let mut joined = 0;
    for w in lines.windows(2) {
        let (a, b) = (w[0], w[1]);
        if a.split_whitespace().count() >= 6
            && !a.ends_with(['.', ':', ';'])
            && b.starts_with(|c: char| c.is_lowercase())
        {
            // The two words on either side of the break stand together in
            // one unit (a word hyphenated at the break is re-joined).
            let last = a.split_whitespace().last().unwrap_or_default();
            let first = b.split_whitespace().next().unwrap_or_default();
            let across = format!("{last} {first}");
            let rejoined = format!("{}{first}", last.trim_end_matches('-'));
            assert!(
                u.iter().any(|x| x.text.contains(&across)
                    || (last.ends_with('-') && x.text.contains(&rejoined))),
                "{a:?} / {b:?} not joined: {:?}",
                u.iter()
                    .filter(|x| x.text.contains(last))
                    .collect::<Vec<_>>()
            );
            joined += 1;
        }
    }
    assert!(joined >= 20, "the PDF has broken lines to join ({joined})");
}

#[test]
fn question_types_pick_the_unit_holding_the_answer() {
    assert_eq!(
        question_type("What is the default opt-level for the release profile?"),
        QuestionType::Number
    );
    let a = ask(
        "answers/ch14-01-release-profiles.html",
        "What is the default opt-level for the release profile?",
    );
    assert!(strip_markers(&a).contains('3'), "{a}");

    assert_eq!(
        question_type("How do I run the tests on a single thread?"),
        QuestionType::Command
    );
    let a = ask(
        "answers/ch11-02-running-tests.html",
        "How do I run the tests on a single thread?",
    );
    assert!(a.contains("--test-threads=1"), "{a}");

    assert_eq!(
        question_type("Which environment variable makes the search case-insensitive?"),
        QuestionType::Identifier
    );
    let a = ask(
        "answers/ch12-05-working-with-environment-variables.html",
        "Which environment variable makes the search case-insensitive?",
    );
    assert!(a.contains("IGNORE_CASE"), "{a}");

    let a = ask(
        "answers/ch09-02-recoverable-errors-with-result.html",
        "What does the ? operator do with an Err value?",
    );
    assert!(a.contains("?"), "{a}");
    assert!(a.contains('['), "cited: {a}");
}

/// Over every 10th question of the SQuAD dev file, asked with its own
/// paragraph as the only source, the answer holds a gold answer often (the
/// unit, or span, that holds the answer is picked).
#[test]
fn squad_questions_of_each_type_get_the_answer_span() {
    let path = data_dir().join("squad-v1.1-dev/dev-v1.1.json");
    let all = read_squad(&path).expect("the shared SQuAD dev file");
    let g = ExtractiveGenerator::new();
    let mut per_type: std::collections::BTreeMap<String, (usize, usize, f64)> = Default::default();
    for q in all.iter().step_by(10) {
        let t = format!("{:?}", question_type(&q.question));
        let src = vec![Source {
            n: 1,
            chunk_id: "p".into(),
            title: q.title.clone(),
            text: q.context.clone(),
        }];
        let a = strip_markers(&g.answer(&q.question, &src, 256));
        let hit = q
            .answers
            .iter()
            .any(|gold| a.to_lowercase().contains(&gold.to_lowercase()));
        // RF_DEBUG_TYPE=Person (a type name) prints that type's misses.
        if std::env::var("RF_DEBUG_TYPE").is_ok_and(|d| d == t) && !hit {
            eprintln!("MISS {} | {} | gold {:?}", q.question, a, q.answers);
        }
        let e = per_type.entry(t).or_default();
        e.0 += 1;
        e.1 += usize::from(hit);
        e.2 += max_over_gold(f1_score, &a, &q.answers);
    }
    for (t, (n, hit, f1)) in &per_type {
        eprintln!(
            "{t}: {n} questions, answer held {hit}, mean F1 {:.3}",
            f1 / *n as f64
        );
    }
    // Floors a little under what the extractor reaches today (every 10th
    // question of the file, all 48 articles): typed questions get a short
    // span, so they are held by F1 too; an open "what/which" question gets
    // the unit that holds the answer, so it is held by containment alone.
    // (share held, mean F1)
    for (t, held, f1_floor) in [
        ("Number", 0.50, 0.50),
        ("Date", 0.70, 0.55),
        ("Person", 0.30, 0.30),
        ("Place", 0.30, 0.30),
        ("Entity", 0.85, 0.15),
    ] {
        let (n, hit, f1) = per_type[t];
        assert!(n >= 50, "{t}: {n}");
        assert!(
            hit as f64 >= held * n as f64,
            "{t}: the answer is held in {hit} of {n}"
        );
        assert!(f1 / n as f64 >= f1_floor, "{t}: mean F1 {}", f1 / n as f64);
    }
}

#[test]
fn attribution_cites_the_supporting_source_and_marks_the_rest() {
    let museum = text_of("ingest/good/museum.html");
    let river = text_of("ingest/good/river.txt");
    let sources = vec![
        Source {
            n: 1,
            chunk_id: "m".into(),
            title: String::new(),
            text: museum,
        },
        Source {
            n: 2,
            chunk_id: "r".into(),
            title: String::new(),
            text: river,
        },
    ];
    // Wrong and missing markers; one sentence no source supports.
    let answer =
        "The blue whale skeleton is 25.2 metres long [2]. The Danube flows to the Black Sea. \
                  Penguins live in the Sahara desert [1].";
    let a = attribute(answer, &sources, 0.5, false);
    assert_eq!(a.sentences.len(), 3, "{a:?}");
    assert_eq!(a.sentences[0].sources, vec![1]);
    assert_eq!(a.sentences[1].sources, vec![2]);
    assert!(!a.sentences[2].supported, "{a:?}");
    assert_eq!(a.used, vec![1, 2]);
    assert!(a.answer.contains("25.2 metres long. [1]"), "{}", a.answer);
    assert!(a.answer.ends_with("Sahara desert. [?]"), "{}", a.answer);
    assert!((a.grounding() - 2.0 / 3.0).abs() < 1e-9);

    let strict = attribute(answer, &sources, 0.5, true);
    assert!(!strict.answer.contains("Sahara"), "{}", strict.answer);
    assert_eq!(strict.sentences.len(), 2);
}

#[tokio::test]
async fn off_topic_questions_get_the_abstention_and_no_citations() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(config(dir.path())).await;
    let mut docs = Vec::new();
    for rel in [
        "answers/ch14-01-release-profiles.html",
        "answers/ch11-02-running-tests.html",
        "answers/ch12-05-working-with-environment-variables.html",
        "ingest/good/museum.html",
        "ingest/good/river.txt",
    ] {
        docs.extend(
            load_path(&fixture(rel), &LoadOptions::default())
                .into_iter()
                .map(Result::unwrap),
        );
    }
    for r in engine.ingest_batch(docs).await {
        r.unwrap();
    }
    for (question, on_topic) in [
        ("What is the capital of Australia?", false),
        ("Who won the 1998 football World Cup?", false),
        ("How do I bake a chocolate cake?", false),
        ("How long is the blue whale skeleton in Hintze Hall?", true),
        (
            "Which environment variable makes the search case-insensitive?",
            true,
        ),
    ] {
        let events: Vec<ChatEvent> = engine
            .chat(ChatRequest::new(question))
            .await
            .unwrap()
            .collect()
            .await;
        let Some(ChatEvent::Done {
            answer,
            citations,
            run_id,
            ..
        }) = events.last()
        else {
            panic!("{events:?}")
        };
        let run = engine.get_run(run_id).await.unwrap().unwrap();
        let rel = run.relevance.expect("the decision is recorded");
        if on_topic {
            assert!(!rel.abstained, "{question}: {rel:?}");
            assert_ne!(answer, NO_ANSWER);
            assert!(!citations.is_empty(), "{question}");
        } else {
            assert!(rel.abstained, "{question}: {rel:?}");
            assert_eq!(answer, NO_ANSWER, "{question}");
            assert!(citations.is_empty(), "{question}: {citations:?}");
            assert!(run.sources.is_empty() && run.attribution.is_empty());
        }
    }
}
