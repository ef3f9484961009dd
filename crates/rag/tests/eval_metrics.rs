//! Metric functions against hand-computed cases, and the dataset readers on
//! small BEIR / SQuAD files.
use std::collections::HashMap;

use ragfleet_rag::eval::metrics::Judgements;
use ragfleet_rag::eval::{
    dedup_ranked, evaluate_run, exact_match, f1_score, max_over_gold, mrr_at_k, ndcg_at_k,
    normalize_answer, read_beir, read_squad, recall_at_k, AnswerScores,
};

fn judged(pairs: &[(&str, i32)]) -> Judgements {
    pairs.iter().map(|(d, g)| (d.to_string(), *g)).collect()
}

fn close(a: f64, b: f64) {
    assert!((a - b).abs() < 1e-9, "{a} != {b}");
}

#[test]
fn ndcg_hand_computed() {
    let j = judged(&[("a", 1), ("b", 1)]);
    // Relevant at ranks 1 and 3: DCG = 1 + 1/log2(4) = 1.5; IDCG = 1 + 1/log2(3).
    let idcg = 1.0 + 1.0 / 3f64.log2();
    close(ndcg_at_k(&["a", "x", "b"], &j, 10), 1.5 / idcg);
    // Perfect ranking.
    close(ndcg_at_k(&["b", "a", "x"], &j, 10), 1.0);
    // Cut at k: the hit at rank 3 no longer counts.
    close(ndcg_at_k(&["x", "y", "a"], &j, 2), 0.0);
    // Graded: grade 2 at rank 2, grade 1 at rank 1.
    let g = judged(&[("a", 1), ("b", 2)]);
    let dcg = 1.0 + 2.0 / 3f64.log2();
    let idcg = 2.0 + 1.0 / 3f64.log2();
    close(ndcg_at_k(&["a", "b"], &g, 10), dcg / idcg);
    // Zero-graded judgements are not relevant.
    close(ndcg_at_k(&["a"], &judged(&[("a", 0)]), 10), 0.0);
}

#[test]
fn recall_and_mrr_hand_computed() {
    let j = judged(&[("a", 1), ("b", 1), ("c", 1), ("z", 0)]);
    let ranked = ["x", "b", "z", "c"];
    close(recall_at_k(&ranked, &j, 10), 2.0 / 3.0);
    close(recall_at_k(&ranked, &j, 2), 1.0 / 3.0);
    close(mrr_at_k(&ranked, &j, 10), 0.5);
    close(mrr_at_k(&ranked, &j, 1), 0.0);
    close(mrr_at_k(&["z", "q", "c"], &j, 10), 1.0 / 3.0);
}

#[test]
fn run_averages_over_judged_queries() {
    let mut qrels = HashMap::new();
    qrels.insert("q1".to_string(), judged(&[("d1", 1)]));
    qrels.insert("q2".to_string(), judged(&[("d2", 1)]));
    qrels.insert("q3".to_string(), judged(&[("d3", 0)])); // no relevant doc: skipped
    let mut run = HashMap::new();
    run.insert("q1".to_string(), vec!["d1".to_string()]);
    run.insert("q2".to_string(), vec!["d9".to_string(), "d2".to_string()]);
    let s = evaluate_run(&run, &qrels);
    assert_eq!(s.queries, 2);
    close(s.mrr_at_10, (1.0 + 0.5) / 2.0);
    close(s.recall_at_10, 1.0);
    close(s.ndcg_at_10, (1.0 + 1.0 / 3f64.log2()) / 2.0);
    // A judged query with no results counts as zero.
    run.remove("q2");
    let s = evaluate_run(&run, &qrels);
    close(s.recall_at_100, 0.5);
}

#[test]
fn dedup_keeps_first_occurrence() {
    assert_eq!(
        dedup_ranked(["a", "b", "a", "c", "b"]),
        vec!["a".to_string(), "b".into(), "c".into()]
    );
}

#[test]
fn squad_normalisation_like_the_official_script() {
    assert_eq!(normalize_answer("The  Denver Broncos!"), "denver broncos");
    assert_eq!(normalize_answer("an apple, a pear"), "apple pear");
    // Articles only as whole words; punctuation goes first.
    assert_eq!(
        normalize_answer("Theater of the-absurd"),
        "theater of theabsurd"
    );
    assert_eq!(normalize_answer("A"), "");
    // Non-ASCII punctuation is not in string.punctuation: kept.
    assert_eq!(normalize_answer("«Győr»"), "«győr»");
}

#[test]
fn squad_em_and_f1_hand_computed() {
    close(exact_match("the Denver Broncos", "Denver Broncos."), 1.0);
    close(exact_match("Broncos", "Denver Broncos"), 0.0);
    // pred [denver, broncos, won], gold [denver, broncos]: P = 2/3, R = 1.
    close(f1_score("Denver Broncos won", "Denver Broncos"), 0.8);
    close(f1_score("Carolina", "Denver Broncos"), 0.0);
    // Repeated tokens count as a multiset: pred [a1 a1], gold [a1]: P=1/2, R=1.
    close(f1_score("x x", "x"), 2.0 * 0.5 / 1.5);
    let golds = vec![
        "Santa Clara, California".to_string(),
        "Levi's Stadium".to_string(),
    ];
    close(max_over_gold(exact_match, "levis stadium", &golds), 1.0);
    close(
        max_over_gold(f1_score, "Santa Clara", &golds),
        2.0 * 1.0 * (2.0 / 3.0) / (1.0 + 2.0 / 3.0),
    );
    let s = AnswerScores::from_pairs([
        ("Levi's Stadium", golds.as_slice()),
        ("nowhere", golds.as_slice()),
    ]);
    close(s.exact_match, 50.0);
    close(s.f1, 50.0);
    assert_eq!(s.questions, 2);
}

#[test]
fn beir_reader_reads_a_dataset_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("qrels")).unwrap();
    std::fs::write(
        dir.path().join("corpus.jsonl"),
        "{\"_id\": \"d#1\", \"title\": \"T\", \"text\": \"alpha\"}\n{\"_id\": 7, \"title\": \"\", \"text\": \"beta\"}\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("queries.jsonl"),
        "{\"_id\": \"q1\", \"text\": \"what alpha\", \"answers\": [\"alpha\"]}\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("qrels/test.tsv"),
        "query-id\tcorpus-id\tscore\nq1\td#1\t1\n",
    )
    .unwrap();
    let ds = read_beir(dir.path(), "test").unwrap();
    assert_eq!(ds.corpus.len(), 2);
    assert_eq!(ds.corpus[0].id.as_deref(), Some("d#1"));
    assert_eq!(ds.corpus[1].id.as_deref(), Some("7"));
    assert_eq!(ds.queries[0].answers, vec!["alpha".to_string()]);
    assert_eq!(ds.qrels["q1"]["d#1"], 1);

    // A bad qrels line is named.
    std::fs::write(
        dir.path().join("qrels/test.tsv"),
        "query-id\tcorpus-id\tscore\nq1\td#1\t1\nq2\td#2\thigh\n",
    )
    .unwrap();
    let e = read_beir(dir.path(), "test").unwrap_err().to_string();
    assert!(e.contains("test.tsv") && e.contains("line 3"), "{e}");
    // A bad corpus line is named too.
    std::fs::write(
        dir.path().join("corpus.jsonl"),
        "{\"_id\": \"d\", \"text\": \"x\"}\n{oops\n",
    )
    .unwrap();
    let e = read_beir(dir.path(), "test").unwrap_err().to_string();
    assert!(e.contains("corpus.jsonl") && e.contains("line 2"), "{e}");
}

#[test]
fn squad_reader_flattens_questions() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("dev.json");
    std::fs::write(
        &p,
        r#"{"version": "1.1", "data": [{"title": "Super_Bowl_50", "paragraphs": [
            {"context": "first", "qas": []},
            {"context": "Denver won.", "qas": [{"id": "q1", "question": "Who won?",
              "answers": [{"answer_start": 0, "text": "Denver"}, {"answer_start": 0, "text": "Denver"}]}]}]}]}"#,
    )
    .unwrap();
    let qs = read_squad(&p).unwrap();
    assert_eq!(qs.len(), 1);
    assert_eq!(qs[0].paragraph, 1);
    assert_eq!(qs[0].title, "Super_Bowl_50");
    assert_eq!(qs[0].answers.len(), 2);
    std::fs::write(&p, "{\"data\": [ {\"title\": 1}").unwrap();
    let e = read_squad(&p).unwrap_err().to_string();
    assert!(e.contains("dev.json") && e.contains("not a SQuAD"), "{e}");
}
