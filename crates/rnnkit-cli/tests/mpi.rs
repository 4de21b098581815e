//! Data-parallel training under `mpirun` (`--features mpi`): two processes of one
//! thread each end a few steps with the weights, optimizer moments and carried state
//! of one process of two threads on the same global batch, to float rounding.
#![cfg(feature = "mpi")]

mod common;

use common::{ok, repo, rnnkit, stderr, write_tones};
use rnnkit::checkpoint::TensorFile;
use std::path::Path;
use std::process::{Command, Output};

/// Largest difference allowed between the two runs' tensors. The processes sum
/// their halves of each batch and then the two halves, where one process sums the
/// rows in another grouping (its GEMMs block the batch differently): the gradients
/// differ by float rounding (~1e-7 relative), and a few Adam steps of lr 3e-3 turn
/// that into weight differences far below this.
const TOLERANCE: f32 = 1e-4;

/// `mpirun`, if MPI is installed; `RNNKIT_REQUIRE_MPI` makes its absence a failure.
fn mpirun() -> Option<&'static str> {
    let found = Command::new("mpirun")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("RNNKIT_REQUIRE_MPI").is_none(),
            "RNNKIT_REQUIRE_MPI is set but no mpirun was found"
        );
        eprintln!("skipped: no MPI installed (apt-get install openmpi-bin libopenmpi-dev)");
        return None;
    }
    Some("mpirun")
}

/// Runs `rnnkit ARGS` as `np` MPI processes in `dir`.
fn mpi_rnnkit(mpirun: &str, np: usize, args: &[&str], dir: &Path) -> Output {
    Command::new(mpirun)
        .args(["-np", &np.to_string(), "--oversubscribe"])
        .arg(env!("CARGO_BIN_EXE_rnnkit"))
        .args(args)
        .current_dir(dir)
        // Open MPI refuses root unless told, as CI containers run.
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .output()
        .expect("mpirun runs")
}

/// A small LSTM char LM on the first 100 kB of Shakespeare, without dropout (the
/// processes draw different masks than one process would).
fn train_args<'a>(text: &'a str, out: &'a str, threads: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "--data",
        text,
        "--hidden",
        "48",
        "--layers",
        "2",
        "--embed",
        "16",
        "--batch",
        "6",
        "--seq-len",
        "24",
        "--steps",
        "6",
        "--dropout",
        "0",
        "--eval-every",
        "3",
        "--threads",
        threads,
        "--sample-length",
        "0",
        "--out",
        out,
    ]
}

/// Largest absolute difference over every tensor of two checkpoints, with its name;
/// both must hold the same tensors.
fn max_difference(a: &Path, b: &Path) -> (f32, String) {
    let (fa, fb) = (TensorFile::open(a).unwrap(), TensorFile::open(b).unwrap());
    let (mut names, names_b) = (fa.names(), fb.names());
    names.sort();
    let mut sorted_b = names_b.clone();
    sorted_b.sort();
    assert_eq!(names, sorted_b, "the checkpoints hold different tensors");
    let mut worst = (0.0f32, String::new());
    for n in names {
        let (x, y) = (
            fa.get::<f32>(&n, None).unwrap(),
            fb.get::<f32>(&n, None).unwrap(),
        );
        assert_eq!(x.shape(), y.shape(), "{n}");
        for (i, (p, q)) in x.data().iter().zip(y.data()).enumerate() {
            let d = (p - q).abs();
            assert!(d.is_finite(), "{n}[{i}]: {p} vs {q}");
            if d > worst.0 {
                worst = (d, format!("{n}[{i}]"));
            }
        }
    }
    worst
}

#[test]
fn two_processes_train_as_one_with_the_same_global_batch() {
    let Some(mpirun) = mpirun() else { return };
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("text.txt");
    let all = std::fs::read_to_string(repo().join("data/shakespeare.txt")).unwrap();
    std::fs::write(&text, &all[..100_000]).unwrap();
    let text = text.to_str().unwrap();
    ok(&rnnkit(&train_args(text, "one", "2"), dir.path()));
    for (out, overlap) in [("two", "on"), ("two-serial", "off")] {
        let mut args = train_args(text, out, "1");
        args.extend(["--mpi-overlap", overlap]);
        let o = mpi_rnnkit(mpirun, 2, &args, dir.path());
        ok(&o);
        let e = stderr(&o);
        // Only the first process speaks: one summary line, one communication line.
        assert_eq!(e.matches("finished at step 6").count(), 1, "{e}");
        assert!(e.contains("data-parallel over 2 processes"), "{e}");
        let (d, at) = max_difference(
            &dir.path().join("one/latest.safetensors"),
            &dir.path().join(out).join("latest.safetensors"),
        );
        eprintln!("--mpi-overlap {overlap}: largest difference {d:e} at {at}");
        assert!(
            d <= TOLERANCE,
            "--mpi-overlap {overlap}: {at} differs by {d}"
        );
        let meta = TensorFile::open(dir.path().join(out).join("latest.safetensors")).unwrap();
        assert_eq!(
            meta.metadata().get("train.world_size").map(String::as_str),
            Some("2")
        );
    }
    // The two processes' run continues on one process: it says so and goes on.
    let latest = dir.path().join("two/latest.safetensors");
    let o = rnnkit(
        &[
            "train",
            "--resume",
            latest.to_str().unwrap(),
            "--steps",
            "8",
            "--sample-length",
            "0",
        ],
        dir.path(),
    );
    ok(&o);
    assert!(
        stderr(&o).contains("resuming a run of 2 process(es) on 1"),
        "{}",
        stderr(&o)
    );
}

/// Trains with `args` as one process of two threads (into `one`) and as two
/// processes of one thread (into `two`); returns the largest difference of the
/// `latest` checkpoints and where it is.
fn one_and_two(mpirun: &str, args: &[&str], dir: &Path) -> (f32, String) {
    let with = |threads: &'static str, out: &'static str| {
        let mut a = args.to_vec();
        a.extend(["--threads", threads, "--out", out]);
        a
    };
    ok(&rnnkit(&with("2", "one"), dir));
    ok(&mpi_rnnkit(mpirun, 2, &with("1", "two"), dir));
    max_difference(
        &dir.join("one/latest.safetensors"),
        &dir.join("two/latest.safetensors"),
    )
}

#[test]
fn every_task_trains_on_two_processes_as_on_one() {
    let Some(mpirun) = mpirun() else { return };
    let dir = tempfile::tempdir().unwrap();
    let uea = repo().join("data/uea/JapaneseVowels");
    let (train, test) = (
        uea.join("JapaneseVowels_TRAIN.ts"),
        uea.join("JapaneseVowels_TEST.ts"),
    );
    // An odd batch: the processes take 4 and 3 cases, weighed by their share.
    let classify = [
        "classify",
        "train",
        "--train",
        train.to_str().unwrap(),
        "--test",
        test.to_str().unwrap(),
        "--hidden",
        "16",
        "--layers",
        "2",
        "--bidirectional",
        "true",
        "--dropout",
        "0",
        "--batch",
        "7",
        "--steps",
        "5",
        "--eval-every",
        "5",
    ];
    let (d, at) = one_and_two(mpirun, &classify, dir.path());
    eprintln!("classify: largest difference {d:e} at {at}");
    assert!(d <= TOLERANCE, "classify: {at} differs by {d}");
    // The tagger's loss is the mean over words: shares of unequal word counts.
    let ud =
        std::fs::read_to_string(repo().join("data/ud-english-ewt/en_ewt-ud-train.conllu")).unwrap();
    let sentences: Vec<&str> = ud.split("\n\n").take(200).collect();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("t.conllu"), sentences.join("\n\n") + "\n\n").unwrap();
    let tag = [
        "tag",
        "train",
        "--train",
        "t.conllu",
        "--dev",
        "t.conllu",
        "--hidden",
        "16",
        "--word-embed",
        "8",
        "--char-hidden",
        "8",
        "--dropout",
        "0",
        "--word-dropout",
        "0",
        "--batch",
        "5",
        "--steps",
        "5",
        "--eval-every",
        "5",
        // The tagger's recipe multiplies in bf16; the comparison is of f32 sums.
        "--f32",
    ];
    let (d, at) = one_and_two(mpirun, &tag, dir.path());
    eprintln!("tag: largest difference {d:e} at {at}");
    assert!(d <= TOLERANCE, "tag: {at} differs by {d}");
    // The encoder–decoder's loss is the mean over target tokens (and the end token).
    let dict = std::fs::read_to_string(repo().join("data/cmudict/cmudict.dict")).unwrap();
    let pairs: Vec<String> = dict
        .lines()
        .take(1000)
        .map(|l| l.replacen(' ', "\t", 1))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.tsv"), pairs.join("\n") + "\n").unwrap();
    std::fs::write(dir.path().join("d.tsv"), pairs[..100].join("\n") + "\n").unwrap();
    let seq2seq = [
        "seq2seq",
        "train",
        "--data",
        "p.tsv",
        "--dev",
        "d.tsv",
        "--test",
        "d.tsv",
        "--target-tokens",
        "space",
        "--hidden",
        "24",
        "--embed",
        "12",
        "--layers",
        "1",
        "--dropout",
        "0",
        "--batch",
        "7",
        "--steps",
        "4",
        "--eval-every",
        "4",
    ];
    let (d, at) = one_and_two(mpirun, &seq2seq, dir.path());
    eprintln!("seq2seq: largest difference {d:e} at {at}");
    assert!(d <= TOLERANCE, "seq2seq: {at} differs by {d}");
    // CTC on tone sequences: the mean over utterances; no augmentation (each
    // process draws its own perturbations, as it does its dropout masks).
    let dir = tempfile::tempdir().unwrap();
    write_tones(dir.path(), "train", 30, 1);
    write_tones(dir.path(), "dev", 6, 2);
    let ctc = [
        "ctc",
        "train",
        "--data",
        "train.tsv",
        "--dev",
        "dev.tsv",
        "--test",
        "dev.tsv",
        "--hidden",
        "16",
        "--layers",
        "2",
        "--dropout",
        "0",
        "--augment",
        "false",
        "--batch",
        "7",
        "--steps",
        "4",
        "--eval-every",
        "4",
    ];
    let (d, at) = one_and_two(mpirun, &ctc, dir.path());
    eprintln!("ctc: largest difference {d:e} at {at}");
    assert!(d <= TOLERANCE, "ctc: {at} differs by {d}");
}

#[test]
fn two_processes_resume_bit_for_bit() {
    let Some(mpirun) = mpirun() else { return };
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("text.txt");
    let all = std::fs::read_to_string(repo().join("data/shakespeare.txt")).unwrap();
    std::fs::write(&text, &all[..50_000]).unwrap();
    let text = text.to_str().unwrap();
    // With dropout: each process's masks come from the run's generator, which the
    // checkpoint holds, and the carried state is the whole batch's.
    let with_dropout = |out: &'static str, steps: &'static str| {
        let mut a = train_args(text, out, "1");
        let at = |flag: &str| a.iter().position(|x| *x == flag).unwrap() + 1;
        let (d, s) = (at("--dropout"), at("--steps"));
        a[d] = "0.2";
        a[s] = steps;
        a
    };
    ok(&mpi_rnnkit(
        mpirun,
        2,
        &with_dropout("straight", "6"),
        dir.path(),
    ));
    ok(&mpi_rnnkit(
        mpirun,
        2,
        &with_dropout("split", "3"),
        dir.path(),
    ));
    let o = mpi_rnnkit(
        mpirun,
        2,
        &[
            "train",
            "--resume",
            "split/latest.safetensors",
            "--steps",
            "6",
            "--threads",
            "1",
            "--sample-length",
            "0",
        ],
        dir.path(),
    );
    ok(&o);
    assert!(!stderr(&o).contains("resuming a run of"), "{}", stderr(&o));
    let (d, at) = max_difference(
        &dir.path().join("straight/latest.safetensors"),
        &dir.path().join("split/latest.safetensors"),
    );
    assert_eq!(d, 0.0, "{at} differs by {d}");
}

#[test]
fn an_error_on_the_processes_ends_the_job_instead_of_hanging() {
    let Some(mpirun) = mpirun() else { return };
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("text.txt");
    let all = std::fs::read_to_string(repo().join("data/shakespeare.txt")).unwrap();
    std::fs::write(&text, &all[..20_000]).unwrap();
    let mut args = train_args(text.to_str().unwrap(), "run", "1");
    let batch = args.iter().position(|a| *a == "--batch").unwrap();
    args[batch + 1] = "1";
    let o = mpi_rnnkit(mpirun, 2, &args, dir.path());
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("a batch of 1 text streams cannot be shared by 2 processes"),
        "{e}"
    );
}
