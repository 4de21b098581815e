//! ONNX export of every model kind, checked by running the exported graphs in
//! tract (a pure-Rust ONNX runtime) against rnnkit's own outputs.
//!
//! tract runs the cases whose sequences all fill the batch (it takes no variable
//! `sequence_lens`); ONNX Runtime runs every case, variable lengths included, from the
//! committed fixtures in `tests/fixtures/onnx/` (`tools/onnx_check.py`). This test also
//! proves those fixtures are what the exporter writes today: each committed `.onnx`
//! equals the bytes exported now. `RNNKIT_WRITE_ONNX_FIXTURES=1` rewrites them.

use rnnkit::data::{parse_conllu, Series, TagColumn, TokenVocab, Vocab};
use rnnkit::export::{self, Exported, Options};
use rnnkit::layer::Linear;
use rnnkit::model::{CharLm, CharLmConfig};
use rnnkit::seq2seq::{AttentionKind, Seq2seq, Seq2seqConfig};
use rnnkit::task::classifier::{Classifier, ClassifierConfig, Standardizer};
use rnnkit::task::ctc::{CtcConfig, CtcModel, Utterance};
use rnnkit::task::tagger::{Tagger, TaggerConfig};
use rnnkit::{CellKind, Merge, PoolKind, RecurrentConfig, RecurrentState, Rng, Tensor};
use std::collections::HashMap;
use std::path::PathBuf;
use tract_onnx::prelude::Tensor as TractTensor;
use tract_onnx::prelude::*;

/// Largest |ONNX − rnnkit| allowed on any compared output.
const TOLERANCE: f32 = 1e-5;

/// A graph input or an expected output.
#[derive(Clone)]
enum Data {
    F32(Vec<usize>, Vec<f32>),
    I64(Vec<usize>, Vec<i64>),
}

/// An expected output: name, shape, values, and the mask of defined values.
type Expected = (&'static str, Vec<usize>, Vec<f32>, Vec<f32>);
/// Outputs by name: shape and values.
type Outputs = HashMap<String, (Vec<usize>, Vec<f32>)>;

/// One run of a graph: its inputs, and the outputs rnnkit computes, each with a
/// mask (1 where the value is defined: padding past a sequence's end is not).
struct Case {
    inputs: Vec<(&'static str, Data)>,
    expect: Vec<Expected>,
    /// tract can run it: every sequence fills the batch (tract takes no variable
    /// `sequence_lens`), and no bidirectional layer reads a single step (tract
    /// mis-infers the shapes there). ONNX Runtime runs every case.
    full: bool,
}

impl Case {
    fn new(full: bool) -> Self {
        Case {
            inputs: Vec::new(),
            expect: Vec::new(),
            full,
        }
    }
    fn input(mut self, name: &'static str, d: Data) -> Self {
        self.inputs.push((name, d));
        self
    }
    fn expect(mut self, name: &'static str, shape: &[usize], v: Vec<f32>, mask: Vec<f32>) -> Self {
        assert_eq!(shape.iter().product::<usize>(), v.len(), "{name}");
        assert_eq!(v.len(), mask.len(), "{name}");
        self.expect.push((name, shape.to_vec(), v, mask));
        self
    }
    fn expect_all(self, name: &'static str, shape: &[usize], v: Vec<f32>) -> Self {
        let m = vec![1.0; v.len()];
        self.expect(name, shape, v, m)
    }
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/onnx")
}

fn random(n: usize, rng: &mut Rng) -> Vec<f32> {
    (0..n).map(|_| rng.uniform_in(-1.0, 1.0) as f32).collect()
}

/// `[T, B, W]` time-major → `[B, T, W]`.
fn batch_major(x: &[f32], t: usize, b: usize, w: usize) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    for s in 0..t {
        for j in 0..b {
            out[(j * t + s) * w..][..w].copy_from_slice(&x[(s * b + j) * w..][..w]);
        }
    }
    out
}

/// Mask `[B, T, W]` of the steps `t < lengths[b]`.
fn step_mask(lengths: &[usize], t: usize, w: usize) -> Vec<f32> {
    let mut m = vec![0.0; lengths.len() * t * w];
    for (j, &l) in lengths.iter().enumerate() {
        m[j * t * w..][..l * w].fill(1.0);
    }
    m
}

fn lengths_i64(lengths: &[usize]) -> Data {
    Data::I64(
        vec![lengths.len()],
        lengths.iter().map(|&l| l as i64).collect(),
    )
}

/// Runs `case` in tract; the outputs by name.
fn run_tract(onnx: &[u8], case: &Case) -> TractResult<Outputs> {
    let mut model = tract_onnx::onnx().model_for_read(&mut &onnx[..])?;
    let mut values = TVec::new();
    for (i, (_, d)) in case.inputs.iter().enumerate() {
        let t: TractTensor = match d {
            Data::F32(s, v) => tract_ndarray::ArrayD::from_shape_vec(s.clone(), v.clone())?.into(),
            Data::I64(s, v) => tract_ndarray::ArrayD::from_shape_vec(s.clone(), v.clone())?.into(),
        };
        model = model.with_input_fact(i, InferenceFact::from(t.clone()))?;
        values.push(t.into_tvalue());
    }
    let names: Vec<String> = model
        .output_outlets()?
        .iter()
        .map(|o| {
            model
                .outlet_label(*o)
                .map(str::to_string)
                .unwrap_or_else(|| model.node(o.node).name.clone())
        })
        .collect();
    let plan = model.into_optimized()?.into_runnable()?;
    let outs = plan.run(values)?;
    let mut by_name = HashMap::new();
    for (name, t) in names.into_iter().zip(outs) {
        let t = t.cast_to::<f32>()?.into_owned();
        let shape = t.shape().to_vec();
        by_name.insert(name, (shape, t.as_slice::<f32>()?.to_vec()));
    }
    Ok(by_name)
}

/// Exports, compares in tract, and checks or writes the fixture of one graph. tract
/// reads an `RNN` node's activations as tanh whatever they are, so a ReLU RNN is left
/// to ONNX Runtime.
fn check(name: &str, graph: &Exported, cases: &[Case]) {
    let bytes = graph.to_bytes();
    let path = fixtures().join(format!("{name}.onnx"));
    if std::env::var_os("RNNKIT_WRITE_ONNX_FIXTURES").is_some() {
        std::fs::create_dir_all(fixtures()).unwrap();
        std::fs::write(&path, &bytes).unwrap();
        write_cases(&fixtures().join(format!("{name}.cases.safetensors")), cases);
    } else {
        let committed = std::fs::read(&path).unwrap_or_else(|e| {
            panic!("{}: {e}; write the fixtures with RNNKIT_WRITE_ONNX_FIXTURES=1 cargo test -p rnnkit --test library onnx_export::, then run tools/onnx_check.py", path.display())
        });
        assert!(
            committed == bytes,
            "{}: the exporter now writes another graph; rewrite the fixtures (RNNKIT_WRITE_ONNX_FIXTURES=1) and check them in ONNX Runtime (tools/onnx_check.py)",
            path.display()
        );
    }
    let mut worst = 0f32;
    let tract_reads_it = !name.contains("rnn_relu");
    let mut ran = 0;
    for (k, case) in cases
        .iter()
        .enumerate()
        .filter(|(_, c)| c.full && tract_reads_it)
    {
        ran += 1;
        let got =
            run_tract(&bytes, case).unwrap_or_else(|e| panic!("{name} case {k}: tract: {e:?}"));
        for (out, shape, want, mask) in &case.expect {
            let (gs, gv) = got
                .get(*out)
                .unwrap_or_else(|| panic!("{name}: no output {out} (has {:?})", got.keys()));
            assert_eq!(gs, shape, "{name} case {k} {out}: shape");
            for i in 0..want.len() {
                if mask[i] > 0.0 {
                    let e = (gv[i] - want[i]).abs();
                    assert!(
                        e <= TOLERANCE,
                        "{name} case {k} {out}[{i}]: tract {} vs rnnkit {}",
                        gv[i],
                        want[i]
                    );
                    worst = worst.max(e);
                }
            }
        }
    }
    eprintln!(
        "{name}: {ran} of {} cases in tract, max |tract − rnnkit| {worst:.2e}",
        cases.len()
    );
}

/// Cases as safetensors: `c{k}/in/{name}`, `c{k}/out/{name}`, `c{k}/mask/{name}`.
fn write_cases(path: &std::path::Path, cases: &[Case]) {
    use safetensors::tensor::{Dtype, TensorView};
    let mut owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (k, c) in cases.iter().enumerate() {
        for (n, d) in &c.inputs {
            match d {
                Data::F32(s, v) => owned.push((
                    format!("c{k}/in/{n}"),
                    Dtype::F32,
                    s.clone(),
                    v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                )),
                Data::I64(s, v) => owned.push((
                    format!("c{k}/in/{n}"),
                    Dtype::I64,
                    s.clone(),
                    v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                )),
            }
        }
        for (n, s, v, m) in &c.expect {
            owned.push((
                format!("c{k}/out/{n}"),
                Dtype::F32,
                s.clone(),
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ));
            owned.push((
                format!("c{k}/mask/{n}"),
                Dtype::F32,
                s.clone(),
                m.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ));
        }
    }
    let views: Vec<(String, TensorView)> = owned
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

fn options() -> Options {
    Options {
        source: "a test model".into(),
        ..Options::default()
    }
}

// ---------------------------------------------------------------- char LM

fn char_lm_cases(lm: &mut CharLm, rng: &mut Rng) -> Vec<Case> {
    let v = lm.vocab().len();
    let cfg = lm.rnn.config().clone();
    let (ld, hs) = (cfg.num_layers * cfg.directions(), cfg.hidden_size);
    let lstm = cfg.cell == CellKind::Lstm;
    let mut cases = Vec::new();
    for &(t, b) in &[(5usize, 2usize), (1, 3), (7, 1)] {
        let ids: Vec<usize> = (0..t * b).map(|_| rng.below(v)).collect();
        let h0 = random(ld * b * hs, rng);
        let c0 = random(ld * b * hs, rng);
        let state = RecurrentState {
            h: Tensor::from_vec(&[ld, b, hs], h0.clone()).unwrap(),
            c: lstm.then(|| Tensor::from_vec(&[ld, b, hs], c0.clone()).unwrap()),
        };
        let (logits, fin) = lm.batch_logits(&ids, t, b, Some(&state)).unwrap();
        let tokens: Vec<i64> = (0..b)
            .flat_map(|j| (0..t).map(move |s| (s, j)))
            .map(|(s, j)| ids[s * b + j] as i64)
            .collect();
        let mut c = Case::new(t > 1 || !cfg.bidirectional)
            .input("tokens", Data::I64(vec![b, t], tokens))
            .input("h0", Data::F32(vec![ld, b, hs], h0));
        if lstm {
            c = c.input("c0", Data::F32(vec![ld, b, hs], c0));
        }
        c = c
            .expect_all("logits", &[b, t, v], batch_major(&logits, t, b, v))
            .expect_all("hn", &[ld, b, hs], fin.h.data().to_vec());
        if let Some(cn) = &fin.c {
            c = c.expect_all("cn", &[ld, b, hs], cn.data().to_vec());
        }
        cases.push(c);
    }
    cases
}

fn vocab() -> Vocab {
    Vocab::from_text("abcdefghij ,.\n").unwrap()
}

#[test]
fn char_lm_every_cell() {
    for (i, cell) in CellKind::ALL.into_iter().enumerate() {
        let mut rng = Rng::new(100 + i as u64);
        let cfg = CharLmConfig {
            cell,
            embed_size: 6,
            hidden_size: 8,
            num_layers: 2,
            dropout: 0.0,
        };
        let mut lm = CharLm::new(&cfg, vocab(), &mut rng).unwrap();
        let cases = char_lm_cases(&mut lm, &mut rng);
        let g = export::char_lm(&lm, &options()).unwrap();
        check(&format!("char_lm_{}", cell.name()), &g, &cases);
    }
}

#[test]
fn char_lm_one_hot() {
    let mut rng = Rng::new(7);
    let cfg = CharLmConfig {
        cell: CellKind::Lstm,
        embed_size: 0,
        hidden_size: 8,
        num_layers: 1,
        dropout: 0.0,
    };
    let mut lm = CharLm::new(&cfg, vocab(), &mut rng).unwrap();
    let cases = char_lm_cases(&mut lm, &mut rng);
    let g = export::char_lm(&lm, &options()).unwrap();
    check("char_lm_one_hot_lstm", &g, &cases);
}

/// Bidirectional layers with every merge of the two directions (a library user's
/// model: the char LM's fields are public).
#[test]
fn bidirectional_merges() {
    for (i, merge) in [Merge::Concat, Merge::Sum, Merge::Mul, Merge::Average]
        .into_iter()
        .enumerate()
    {
        let mut rng = Rng::new(200 + i as u64);
        let cfg = CharLmConfig {
            cell: CellKind::Gru,
            embed_size: 5,
            hidden_size: 6,
            num_layers: 2,
            dropout: 0.0,
        };
        let mut lm = CharLm::new(&cfg, vocab(), &mut rng).unwrap();
        let rc = RecurrentConfig::new(CellKind::Gru, 5, 6)
            .with_layers(2)
            .with_bidirectional(true)
            .with_merge(merge);
        lm.rnn = rc.init(&mut rng).unwrap();
        lm.head = Linear::new(rc.output_size(), vocab().len(), &mut rng);
        let cases = char_lm_cases(&mut lm, &mut rng);
        let g = export::char_lm(&lm, &options()).unwrap();
        check(&format!("char_lm_bi_{merge:?}").to_lowercase(), &g, &cases);
    }
}

// ---------------------------------------------------------------- classifier

#[test]
fn classifier_cells_pools_directions() {
    let configs = [
        (CellKind::Lstm, PoolKind::Last, true, 1),
        (CellKind::Gru, PoolKind::Mean, true, 2),
        (CellKind::RnnRelu, PoolKind::Max, false, 1),
        (CellKind::GruResetBefore, PoolKind::Last, false, 2),
        (CellKind::RnnTanh, PoolKind::Max, true, 1),
        (CellKind::Lstm, PoolKind::Mean, false, 1),
    ];
    let channels = 3;
    for (i, (cell, pool, bidirectional, layers)) in configs.into_iter().enumerate() {
        let mut rng = Rng::new(300 + i as u64);
        let cfg = ClassifierConfig {
            cell,
            hidden_size: 7,
            num_layers: layers,
            bidirectional,
            dropout: 0.0,
            pool,
        };
        let norm = Standardizer {
            mean: Tensor::from_vec(&[channels], vec![0.5, -1.0, 2.0]).unwrap(),
            std: Tensor::from_vec(&[channels], vec![2.0, 0.5, 1.5]).unwrap(),
        };
        let labels = vec!["a".to_string(), "b".into(), "c".into()];
        let mut clf = Classifier::new(&cfg, channels, labels, norm, &mut rng).unwrap();
        let mut cases = Vec::new();
        for lengths in [vec![6usize, 6], vec![6, 2, 1], vec![4]] {
            let t = *lengths.iter().max().unwrap();
            let series: Vec<Series> = lengths
                .iter()
                .map(|&l| Series {
                    values: random(l * channels, &mut rng),
                    len: l,
                    label: 0,
                })
                .collect();
            let refs: Vec<&Series> = series.iter().collect();
            let batch = clf.batch(&refs).unwrap();
            let logits = clf.logits(&batch).unwrap();
            let b = lengths.len();
            let mut x = vec![0f32; b * t * channels];
            for (j, s) in series.iter().enumerate() {
                x[j * t * channels..][..s.values.len()].copy_from_slice(&s.values);
            }
            let full = lengths.iter().all(|&l| l == t);
            cases.push(
                Case::new(full)
                    .input("features", Data::F32(vec![b, t, channels], x))
                    .input("lengths", lengths_i64(&lengths))
                    .expect_all("logits", &[b, 3], logits),
            );
        }
        let g = export::classifier(&clf, &options()).unwrap();
        let dir = if bidirectional { "bi" } else { "uni" };
        let name = format!("classifier_{}_{}_{dir}", cell.name(), pool.name());
        check(&name, &g, &cases);
        // The reductions change form with the opset (axes an attribute before 18).
        if i == 1 || i == 2 {
            for opset in [13, 21] {
                let o = Options { opset, ..options() };
                let g = export::classifier(&clf, &o).unwrap();
                check(&format!("{name}_opset{opset}"), &g, &cases);
            }
        }
    }
}

// ---------------------------------------------------------------- tagger

const CONLLU: &str = "\
1\tThe\tthe\tDET\tDT\t_\t2\tdet\t_\t_
2\tcat\tcat\tNOUN\tNN\t_\t3\tnsubj\t_\t_
3\tsat\tsit\tVERB\tVBD\t_\t0\troot\t_\t_
4\t.\t.\tPUNCT\t.\t_\t3\tpunct\t_\t_

1\tA\ta\tDET\tDT\t_\t2\tdet\t_\t_
2\tdog\tdog\tNOUN\tNN\t_\t3\tnsubj\t_\t_
3\truns\trun\tVERB\tVBZ\t_\t0\troot\t_\t_

1\tCats\tcat\tNOUN\tNNS\t_\t2\tnsubj\t_\t_
2\tsleep\tsleep\tVERB\tVBP\t_\t0\troot\t_\t_

";

/// Sentences with unknown words, unknown characters and a word over the
/// character limit.
const UNSEEN: &str = "\
1\tThe\tthe\tDET\tDT\t_\t2\tdet\t_\t_
2\tantidisestablishmentarianisms\tx\tNOUN\tNN\t_\t3\tnsubj\t_\t_
3\tsat\tsit\tVERB\tVBD\t_\t0\troot\t_\t_
4\tquickly\tquickly\tADV\tRB\t_\t3\tadvmod\t_\t_
5\t!\t!\tPUNCT\t.\t_\t3\tpunct\t_\t_

1\tZebras\tzebra\tNOUN\tNNS\t_\t2\tnsubj\t_\t_
2\truns\trun\tVERB\tVBZ\t_\t0\troot\t_\t_

1\tDog\tdog\tNOUN\tNN\t_\t0\troot\t_\t_

";

#[test]
fn tagger_with_and_without_characters() {
    let train = parse_conllu(CONLLU, "train").unwrap();
    let test = parse_conllu(UNSEEN, "test").unwrap();
    for (i, (cell, char_hidden, layers)) in [(CellKind::Lstm, 4, 1), (CellKind::Gru, 0, 2)]
        .into_iter()
        .enumerate()
    {
        let mut rng = Rng::new(400 + i as u64);
        let cfg = TaggerConfig {
            cell,
            word_embed: 5,
            char_embed: 3,
            char_hidden,
            hidden_size: 6,
            num_layers: layers,
            dropout: 0.0,
            word_dropout: 0.0,
            min_freq: 1,
            column: TagColumn::Upos,
        };
        let mut tagger = Tagger::new(&cfg, &train, &mut rng).unwrap();
        let k = tagger.tags.len();
        let mut cases = Vec::new();
        for pick in [vec![0usize, 0], vec![0, 1, 2], vec![1]] {
            let sents: Vec<_> = pick.iter().map(|&p| &test[p]).collect();
            let logits = tagger.logits(&sents).unwrap();
            let (t, b) = (logits.shape()[0], logits.shape()[1]);
            let lengths: Vec<usize> = sents.iter().map(|s| s.len()).collect();
            let longest = sents
                .iter()
                .flat_map(|s| (0..s.len()).map(|w| tagger.char_ids(s.form(w)).len()))
                .max()
                .unwrap();
            let mut words = vec![0i64; b * t];
            let mut chars = vec![0i64; b * t * longest];
            let mut counts = vec![0i64; b * t];
            for (j, s) in sents.iter().enumerate() {
                for w in 0..s.len() {
                    words[j * t + w] = tagger.word_id(s.form(w)) as i64;
                    let ids = tagger.char_ids(s.form(w));
                    counts[j * t + w] = ids.len() as i64;
                    for (c, &id) in ids.iter().enumerate() {
                        chars[(j * t + w) * longest + c] = id as i64;
                    }
                }
            }
            // Words have characters of varied counts: only ONNX Runtime runs the
            // character network.
            let full = lengths.iter().all(|&l| l == t) && tagger.char_rnn.is_none();
            cases.push(
                Case::new(full)
                    .input("words", Data::I64(vec![b, t], words))
                    .input("chars", Data::I64(vec![b, t, longest], chars))
                    .input("char_lengths", Data::I64(vec![b, t], counts))
                    .input("lengths", lengths_i64(&lengths))
                    .expect(
                        "logits",
                        &[b, t, k],
                        batch_major(logits.data(), t, b, k),
                        step_mask(&lengths, t, k),
                    ),
            );
        }
        let g = export::tagger(&tagger, &options()).unwrap();
        check(
            &format!("tagger_{}_chars{char_hidden}", cell.name()),
            &g,
            &cases,
        );
    }
}

// ---------------------------------------------------------------- CTC

#[test]
fn ctc_models() {
    for (i, (cell, bidirectional, stack)) in [(CellKind::Lstm, true, 3), (CellKind::Gru, false, 2)]
        .into_iter()
        .enumerate()
    {
        let mut rng = Rng::new(500 + i as u64);
        let cfg = CtcConfig {
            cell,
            hidden_size: 6,
            num_layers: 2,
            bidirectional,
            dropout: 0.0,
            stack,
            augment: false,
        };
        let bands = 4;
        let labels: Vec<char> = "abc".chars().collect();
        let mut m = CtcModel::new(&cfg, bands, labels, &mut rng).unwrap();
        let k = m.classes();
        let mut cases = Vec::new();
        for frames in [vec![6usize, 6], vec![7, 5, 2], vec![1]] {
            let f = *frames.iter().max().unwrap();
            let utts: Vec<Utterance> = frames
                .iter()
                .map(|&n| Utterance {
                    frames: n,
                    values: random(n * bands, &mut rng),
                    target: vec![1],
                })
                .collect();
            let refs: Vec<&Utterance> = utts.iter().collect();
            let batch = m.batch(&refs).unwrap();
            let lp = m.log_probs(&batch).unwrap();
            let b = frames.len();
            let t = batch.x.shape()[0];
            let mut x = random(b * f * bands, &mut rng); // padding holds noise: it must be ignored
            for (j, u) in utts.iter().enumerate() {
                x[j * f * bands..][..u.values.len()].copy_from_slice(&u.values);
            }
            let full = frames.iter().all(|&n| n == f);
            let out_len: Vec<f32> = batch.lengths.iter().map(|&l| l as f32).collect();
            cases.push(
                Case::new(full)
                    .input("features", Data::F32(vec![b, f, bands], x))
                    .input("lengths", lengths_i64(&frames))
                    .expect(
                        "log_probs",
                        &[b, t, k],
                        batch_major(&lp, t, b, k),
                        step_mask(&batch.lengths, t, k),
                    )
                    .expect_all("out_lengths", &[b], out_len),
            );
        }
        let g = export::ctc(&m, &options()).unwrap();
        let dir = if bidirectional { "bi" } else { "uni" };
        check(
            &format!("ctc_{}_{dir}_stack{stack}", cell.name()),
            &g,
            &cases,
        );
    }
}

// ---------------------------------------------------------------- seq2seq

#[test]
fn seq2seq_encoder_and_decoder_step() {
    let configs = [
        (CellKind::Lstm, AttentionKind::General, true, 1),
        (CellKind::Gru, AttentionKind::Additive, true, 2),
        (CellKind::RnnTanh, AttentionKind::Dot, false, 1),
        (CellKind::Lstm, AttentionKind::None, false, 2),
    ];
    for (i, (cell, attention, bidirectional, layers)) in configs.into_iter().enumerate() {
        let mut rng = Rng::new(600 + i as u64);
        let cfg = Seq2seqConfig {
            cell,
            attention,
            embed: 5,
            hidden_size: 6,
            num_layers: layers,
            bidirectional,
            dropout: 0.0,
            label_smoothing: 0.0,
        };
        let src = TokenVocab::new("abcdefg".chars().map(String::from).collect()).unwrap();
        let tgt =
            TokenVocab::new(["</s>", "<s>", "x", "y", "z"].map(String::from).to_vec()).unwrap();
        let vt = tgt.len();
        let mut m: Seq2seq<f32> =
            Seq2seq::new(&cfg, src, tgt, Default::default(), &mut rng).unwrap();
        let h = 6;
        let lstm = cell == CellKind::Lstm;
        let attend = attention != AttentionKind::None;
        let keyed = matches!(attention, AttentionKind::General | AttentionKind::Additive);
        let (mut enc_cases, mut dec_cases) = (Vec::new(), Vec::new());
        for lengths in [vec![5usize, 5], vec![6, 3, 1], vec![2]] {
            let (s, b) = (*lengths.iter().max().unwrap(), lengths.len());
            let mut ids = vec![0usize; s * b];
            let mut source = vec![0i64; b * s];
            for (j, &l) in lengths.iter().enumerate() {
                for t in 0..l {
                    let id = rng.below(7);
                    ids[t * b + j] = id;
                    source[j * s + t] = id as i64;
                }
            }
            let (mem, state) = m.encode(&ids, &lengths, None).unwrap();
            let memory = batch_major(&mem.enc, s, b, h);
            let keys = batch_major(mem.keys(), s, b, h);
            let mut e = Case::new(lengths.iter().all(|&l| l == s))
                .input("source", Data::I64(vec![b, s], source))
                .input("lengths", lengths_i64(&lengths))
                .expect(
                    "memory",
                    &[b, s, h],
                    memory.clone(),
                    step_mask(&lengths, s, h),
                );
            if keyed {
                e = e.expect("keys", &[b, s, h], keys.clone(), step_mask(&lengths, s, h));
            }
            e = e.expect_all("h0", &[layers, b, h], state.h.data().to_vec());
            if let Some(c) = &state.c {
                e = e.expect_all("c0", &[layers, b, h], c.data().to_vec());
            }
            enc_cases.push(e);

            // Two chained decoder steps: from <s> and a zero feed, then from a token.
            let (mut tokens, mut feed, mut st) = (vec![1usize; b], vec![0f32; b * h], state);
            for _ in 0..2 {
                let (o, next, alpha) = m.step(&tokens, &feed, &st, &mem).unwrap();
                let mut logits = vec![0f32; b * vt];
                m.out.forward(&o, b, &mut logits);
                let mut d = Case::new(true).input(
                    "token",
                    Data::I64(vec![b], tokens.iter().map(|&t| t as i64).collect()),
                );
                if attend {
                    d = d.input("feed", Data::F32(vec![b, h], feed.clone()));
                }
                d = d.input("h", Data::F32(vec![layers, b, h], st.h.data().to_vec()));
                if let Some(c) = &st.c {
                    d = d.input("c", Data::F32(vec![layers, b, h], c.data().to_vec()));
                }
                if attend {
                    d = d.input("memory", Data::F32(vec![b, s, h], memory.clone()));
                    if keyed {
                        d = d.input("keys", Data::F32(vec![b, s, h], keys.clone()));
                    }
                    d = d.input("lengths", lengths_i64(&lengths));
                }
                d = d.expect_all("logits", &[b, vt], logits.clone());
                if attend {
                    d = d.expect_all("feed_out", &[b, h], o.clone());
                }
                d = d.expect_all("h_out", &[layers, b, h], next.h.data().to_vec());
                if let Some(c) = &next.c {
                    d = d.expect_all("c_out", &[layers, b, h], c.data().to_vec());
                }
                if attend {
                    d = d.expect(
                        "attention",
                        &[b, s],
                        alpha.clone(),
                        step_mask(&lengths, s, 1),
                    );
                }
                dec_cases.push(d);
                tokens = (0..b)
                    .map(|j| {
                        let row = &logits[j * vt..][..vt];
                        (0..vt).max_by(|&x, &y| row[x].total_cmp(&row[y])).unwrap()
                    })
                    .collect();
                feed = o;
                st = next;
            }
            assert!(lstm == st.c.is_some());
        }
        let [enc, dec] = export::seq2seq(&m, &options()).unwrap();
        let dir = if bidirectional { "bi" } else { "uni" };
        let name = format!("seq2seq_{}_{}_{dir}", cell.name(), attention.name());
        check(&format!("{name}.encoder"), &enc, &enc_cases);
        check(&format!("{name}.decoder"), &dec, &dec_cases);
    }
}

#[test]
fn opsets_outside_the_range_are_refused() {
    let mut rng = Rng::new(1);
    let cfg = CharLmConfig {
        cell: CellKind::Lstm,
        embed_size: 4,
        hidden_size: 4,
        num_layers: 1,
        dropout: 0.0,
    };
    let lm = CharLm::new(&cfg, vocab(), &mut rng).unwrap();
    for opset in [12, 22] {
        let o = Options {
            opset,
            ..Options::default()
        };
        let e = export::char_lm(&lm, &o).unwrap_err().to_string();
        assert!(e.contains("opset") && e.contains("13 to 21"), "{e}");
    }
    for opset in export::OPSETS {
        let o = Options {
            opset,
            ..Options::default()
        };
        let g = export::char_lm(&lm, &o).unwrap();
        assert_eq!(g.model.opset_import[0].version, Some(opset));
    }
}
