//! `ragfleet eval` end to end with the real binary and the real embedder:
//! retrieval metrics on a small BEIR-layout directory written here (table and
//! JSON output), answer scores on a tiny SQuAD v1.1 file with the extractive
//! generator, and bad input (missing directory, broken lines) → a non-zero
//! exit with a message naming the file and the line.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_ragfleet");

fn models_dir() -> PathBuf {
    std::env::var_os("RAGFLEET_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models"))
}

/// The binary with the models and its own temporary directory (`TMPDIR`), so
/// a test can check that the engine's scratch directory is removed.
fn ragfleet(tmpdir: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.env("RAGFLEET_MODELS", models_dir())
        .env("TMPDIR", tmpdir)
        .env_remove("RAGFLEET_LOG_JSON");
    c
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Six paragraphs on unrelated topics; each judged query shares its rare
/// words with exactly one of them, so its answer is obvious.
const CORPUS: &[(&str, &str, &str)] = &[
    (
        "bees",
        "Honey bee",
        "Honey bees communicate the direction and distance of flowers with the waggle dance. \
         A forager returning to the hive dances on the comb.",
    ),
    (
        "etna",
        "Mount Etna",
        "Mount Etna on the island of Sicily is the most active volcano in Europe. \
         Its eruptions have been recorded since 1500 BC.",
    ),
    (
        "aletsch",
        "Aletsch Glacier",
        "The Aletsch Glacier in the Bernese Alps is the largest glacier in the Alps, \
         about 23 kilometres long.",
    ),
    (
        "louvre",
        "Louvre",
        "The Louvre in Paris is the most visited art museum in the world. It holds the \
         Mona Lisa, painted by Leonardo da Vinci.",
    ),
    (
        "chess",
        "Chess",
        "In chess the knight moves in an L shape: two squares in one direction and one \
         square at a right angle. It is the only piece that can jump over others.",
    ),
    (
        "saturn",
        "Saturn",
        "Saturn is the sixth planet from the Sun and has a prominent system of rings \
         made mostly of ice particles.",
    ),
];

/// (query id, text, relevant doc, grade). Query 7 is judged only with grade
/// 0 and query "unjudged" has no qrels line: neither is evaluated.
const QUERIES: &[(&str, &str, &str, i32)] = &[
    (
        "q1",
        "What dance do honey bees use to show where flowers are?",
        "bees",
        1,
    ),
    (
        "q2",
        "Which volcano on Sicily is the most active in Europe?",
        "etna",
        1,
    ),
    (
        "q3",
        "What is the largest glacier in the Alps?",
        "aletsch",
        1,
    ),
    ("q4", "Which Paris museum holds the Mona Lisa?", "louvre", 1),
    ("q5", "How does a knight move in chess?", "chess", 2),
    ("7", "What are the rings of Saturn made of?", "saturn", 0),
];

fn write_beir(dir: &Path) {
    std::fs::create_dir_all(dir.join("qrels")).unwrap();
    let corpus: String = CORPUS
        .iter()
        .map(|(id, title, text)| {
            serde_json::json!({"_id": id, "title": title, "text": text}).to_string() + "\n"
        })
        .collect();
    std::fs::write(dir.join("corpus.jsonl"), corpus).unwrap();
    let mut queries: String = QUERIES
        .iter()
        .map(|(id, text, _, _)| {
            // Numeric ids are valid BEIR too.
            let id: serde_json::Value = id
                .parse::<u64>()
                .map_or_else(|_| (*id).into(), serde_json::Value::from);
            serde_json::json!({"_id": id, "text": text}).to_string() + "\n"
        })
        .collect();
    queries.push_str(
        &(serde_json::json!({"_id": "unjudged", "text": "Who painted the Mona Lisa?"}).to_string()
            + "\n"),
    );
    std::fs::write(dir.join("queries.jsonl"), queries).unwrap();
    let mut qrels = String::from("query-id\tcorpus-id\tscore\n");
    for (q, _, d, g) in QUERIES {
        qrels.push_str(&format!("{q}\t{d}\t{g}\n"));
    }
    std::fs::write(dir.join("qrels/test.tsv"), qrels).unwrap();
}

/// `| mode | nDCG@10 | Recall@10 | Recall@100 | MRR@10 | queries/s |` rows.
fn table_rows(stdout: &str) -> Vec<(String, Vec<f64>)> {
    stdout
        .lines()
        .filter(|l| l.starts_with('|') && !l.starts_with("| mode") && !l.starts_with("|--"))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
            let nums = cells[1..]
                .iter()
                .map(|c| {
                    c.parse::<f64>()
                        .unwrap_or_else(|_| panic!("not a number in {l:?}"))
                })
                .collect();
            (cells[0].to_string(), nums)
        })
        .collect()
}

fn assert_no_scratch_left(tmpdir: &Path) {
    let left: Vec<_> = std::fs::read_dir(tmpdir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .collect();
    assert!(
        left.is_empty(),
        "eval left {left:?} in its temporary directory"
    );
}

#[test]
fn eval_retrieval_table_and_json() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("beir");
    let scratch = tmp.path().join("tmp");
    std::fs::create_dir(&scratch).unwrap();
    write_beir(&data);

    // The table, every mode.
    let out = ragfleet(&scratch)
        .args(["eval", "retrieval", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "eval failed:\n{stdout}\n{stderr}");
    // 6 documents; 5 of the 7 queries have a relevant judgement.
    assert!(
        stdout.contains("6 documents, 5 queries evaluated"),
        "{stdout}"
    );
    let rows = table_rows(&stdout);
    let modes: Vec<&str> = rows.iter().map(|(m, _)| m.as_str()).collect();
    assert_eq!(modes, ["lexical", "vector", "hybrid"], "{stdout}");
    for (mode, nums) in &rows {
        assert_eq!(nums.len(), 5, "{stdout}");
        for &m in &nums[..4] {
            assert!(
                (0.0..=1.0).contains(&m),
                "{mode}: {m} out of [0, 1]\n{stdout}"
            );
        }
        assert!(nums[4] > 0.0, "{mode}: queries/s {}\n{stdout}", nums[4]);
    }
    // Each query's words (and meaning) point at one paragraph: every mode
    // ranks it first, so every metric is 1.
    for (mode, nums) in &rows {
        assert_eq!(nums[..4], [1.0, 1.0, 1.0, 1.0], "{mode}\n{stdout}");
    }
    assert_no_scratch_left(&scratch);

    // JSON, a subset of modes and queries.
    let out = ragfleet(&scratch)
        .args([
            "eval",
            "retrieval",
            "--json",
            "--modes",
            "lexical,hybrid",
            "--queries",
            "2",
            "--data",
        ])
        .arg(&data)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "eval failed:\n{stdout}\n{stderr}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}):\n{stdout}"));
    assert_eq!(v["documents"], 6, "{v}");
    assert_eq!(v["queries"], 2, "{v}");
    let modes = v["modes"].as_array().unwrap();
    let names: Vec<&str> = modes.iter().filter_map(|m| m["mode"].as_str()).collect();
    assert_eq!(names, ["lexical", "hybrid"], "{v}");
    for m in modes {
        assert_eq!(m["queries"], 2, "{v}");
        for key in ["ndcg_at_10", "recall_at_10", "recall_at_100", "mrr_at_10"] {
            let x = m[key].as_f64().unwrap_or(-1.0);
            assert!((0.0..=1.0).contains(&x), "{key} = {x}: {v}");
        }
    }
    assert_eq!(modes[0]["ndcg_at_10"], 1.0, "{v}");
    assert_eq!(modes[0]["mrr_at_10"], 1.0, "{v}");
    // The summary line went to stderr, keeping stdout machine-readable.
    assert!(stderr.contains("2 queries evaluated"), "{stderr}");
    assert_no_scratch_left(&scratch);
}

/// Runs `eval retrieval` on `data` and returns its stderr, asserting a clean
/// failure (non-zero exit, no panic).
fn retrieval_fails(data: &Path, extra: &[&str]) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let out = ragfleet(tmp.path())
        .args(["eval", "retrieval", "--data"])
        .arg(data)
        .args(extra)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "eval succeeded:\n{stdout}\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

#[test]
fn eval_retrieval_bad_input_names_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();

    // Not a dataset directory.
    let err = retrieval_fails(&tmp.path().join("no-such-dataset"), &[]);
    assert!(
        err.contains("no-such-dataset/corpus.jsonl") && err.contains("missing"),
        "{err}"
    );

    // A broken corpus line (line 3 is cut off).
    let data = tmp.path().join("broken-corpus");
    write_beir(&data);
    let corpus = std::fs::read_to_string(data.join("corpus.jsonl")).unwrap();
    let mut lines: Vec<&str> = corpus.lines().collect();
    lines[2] = r#"{"_id": "aletsch", "title": "Aletsch Glacier", "text": "The Aletsch"#;
    std::fs::write(data.join("corpus.jsonl"), lines.join("\n")).unwrap();
    let err = retrieval_fails(&data, &[]);
    assert!(
        err.contains("corpus.jsonl") && err.contains("line 3"),
        "{err}"
    );

    // A broken query line (line 2 has no text).
    let data = tmp.path().join("broken-queries");
    write_beir(&data);
    let queries = std::fs::read_to_string(data.join("queries.jsonl")).unwrap();
    let mut lines: Vec<&str> = queries.lines().collect();
    lines[1] = r#"{"_id": "q2"}"#;
    std::fs::write(data.join("queries.jsonl"), lines.join("\n")).unwrap();
    let err = retrieval_fails(&data, &[]);
    assert!(
        err.contains("queries.jsonl") && err.contains("line 2"),
        "{err}"
    );

    // A qrels line whose score is not a number (line 4, after the header).
    let data = tmp.path().join("broken-qrels");
    write_beir(&data);
    let qrels = std::fs::read_to_string(data.join("qrels/test.tsv")).unwrap();
    let mut lines: Vec<&str> = qrels.lines().collect();
    lines[3] = "q3\taletsch\thigh";
    std::fs::write(data.join("qrels/test.tsv"), lines.join("\n")).unwrap();
    let err = retrieval_fails(&data, &[]);
    assert!(err.contains("test.tsv") && err.contains("line 4"), "{err}");

    // A split that has no qrels file.
    let data = tmp.path().join("good");
    write_beir(&data);
    let err = retrieval_fails(&data, &["--split", "dev"]);
    assert!(err.contains("qrels/dev.tsv"), "{err}");
}

fn write_squad(path: &Path) {
    let squad = serde_json::json!({
        "version": "1.1",
        "data": [
            {
                "title": "Honey_bee",
                "paragraphs": [{
                    "context": CORPUS[0].2,
                    "qas": [
                        {"id": "b1", "question": "What dance do honey bees use to show where flowers are?",
                         "answers": [{"answer_start": 66, "text": "the waggle dance"}]},
                        {"id": "b2", "question": "Where does a returning forager dance?",
                         "answers": [{"answer_start": 123, "text": "on the comb"}]}
                    ]
                }]
            },
            {
                "title": "Mount_Etna",
                "paragraphs": [
                    {
                        "context": CORPUS[1].2,
                        "qas": [{"id": "e1", "question": "On which island is Mount Etna?",
                                 "answers": [{"answer_start": 28, "text": "Sicily"}]}]
                    },
                    {
                        "context": CORPUS[3].2,
                        "qas": [{"id": "l1", "question": "Who painted the Mona Lisa?",
                                 "answers": [{"answer_start": 100, "text": "Leonardo da Vinci"}]}]
                    }
                ]
            }
        ]
    });
    std::fs::write(path, serde_json::to_string_pretty(&squad).unwrap()).unwrap();
}

#[test]
fn eval_answers_extractive() {
    let tmp = tempfile::tempdir().unwrap();
    let squad = tmp.path().join("squad.json");
    write_squad(&squad);
    let scratch = tmp.path().join("tmp");
    std::fs::create_dir(&scratch).unwrap();

    // More questions asked for than the file has: all 4 are used.
    let out = ragfleet(&scratch)
        .args([
            "eval",
            "answers",
            "--generator",
            "extractive",
            "--sample",
            "10",
            "--squad",
        ])
        .arg(&squad)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "eval failed:\n{stdout}\n{stderr}");
    assert!(
        stdout
            .contains("4 questions sampled (seed 42, articles all), 3 paragraphs indexed, generator extractive, min_relevance 0.5"),
        "{stdout}"
    );
    let row = stdout
        .lines()
        .find(|l| l.starts_with("| extractive"))
        .unwrap_or_else(|| panic!("no result row:\n{stdout}"));
    let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
    assert_eq!(cells[1], "4", "{row}");
    let em: f64 = cells[2].parse().unwrap();
    let f1: f64 = cells[3].parse().unwrap();
    assert!((0.0..=100.0).contains(&em), "{row}");
    // The extractive answers are spans or whole units around the gold
    // answers: their tokens overlap the gold answers.
    assert!(f1 > 0.0 && f1 <= 100.0, "{row}");
    assert!(em <= f1, "{row}");
    assert_no_scratch_left(&scratch);

    // JSON: the same scores (the run is deterministic).
    let out = ragfleet(&scratch)
        .args(["eval", "answers", "--json", "--sample", "10", "--squad"])
        .arg(&squad)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "eval failed:\n{stdout}\n{stderr}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}):\n{stdout}"));
    assert_eq!(v["generator"], "extractive", "{v}");
    assert_eq!(v["questions"], 4, "{v}");
    assert_eq!(format!("{:.2}", v["f1"].as_f64().unwrap()), cells[3], "{v}");
    assert_eq!(
        format!("{:.2}", v["exact_match"].as_f64().unwrap()),
        cells[2],
        "{v}"
    );
}

#[test]
fn eval_answers_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |args: &[&str], squad: &Path| {
        let out = ragfleet(tmp.path())
            .args(["eval", "answers"])
            .args(args)
            .arg("--squad")
            .arg(squad)
            .output()
            .unwrap();
        let (stdout, stderr) = text(&out);
        assert!(!out.status.success(), "eval succeeded:\n{stdout}\n{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        stderr
    };

    // Not JSON from line 3 on.
    let broken = tmp.path().join("broken.json");
    std::fs::write(
        &broken,
        "{\"version\": \"1.1\",\n \"data\": [\n  {\"title\": \"X\", \"paragraphs\": [}\n]}\n",
    )
    .unwrap();
    let err = run(&[], &broken);
    assert!(
        err.contains("broken.json") && err.contains("line 3"),
        "{err}"
    );

    // A missing file.
    let err = run(&[], &tmp.path().join("no-such.json"));
    assert!(err.contains("no-such.json"), "{err}");

    // Unknown generator, empty sample: refused with the flag named.
    let squad = tmp.path().join("squad.json");
    write_squad(&squad);
    let err = run(&["--generator", "oracle"], &squad);
    assert!(err.contains("--generator"), "{err}");
    let err = run(&["--sample", "0"], &squad);
    assert!(err.contains("--sample"), "{err}");
}
