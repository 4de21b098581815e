//! The batch-1 stepper (sampling) against the model's own sequence forward pass:
//! every cell kind, with and without the first layer's lookup table, with the
//! hidden units split between two threads and not, in f32, bfloat16 and int8.

use rnnkit::cell::CellKind;
use rnnkit::data::Vocab;
use rnnkit::decode::{generate, SamplingConfig};
use rnnkit::model::{CharLm, CharLmConfig, Stepper, Weights};
use rnnkit::Rng;

fn model(cell: CellKind, vocab: usize, embed: usize, hidden: usize) -> CharLm {
    deep_model(cell, vocab, embed, hidden, 2)
}

fn deep_model(cell: CellKind, vocab: usize, embed: usize, hidden: usize, layers: usize) -> CharLm {
    let chars = (0..vocab as u32)
        .map(|i| char::from_u32(0x41 + i).unwrap())
        .collect();
    let cfg = CharLmConfig {
        cell,
        embed_size: embed,
        hidden_size: hidden,
        num_layers: layers,
        dropout: 0.0,
    };
    CharLm::new(&cfg, Vocab::from_chars(chars).unwrap(), &mut Rng::new(7)).unwrap()
}

/// Largest difference between the stepper's logits and the sequence pass's, over
/// 12 characters with the state carried, relative to the largest logit.
fn worst_error(m: &mut CharLm, weights: Weights) -> f32 {
    let vocab = m.vocab().len();
    let ids: Vec<usize> = (0..12).map(|i| (i * 7 + 3) % vocab).collect();
    let mut stepper = Stepper::new(m, weights).unwrap();
    // Split as on a large model, whatever this one's size.
    stepper.set_threads(rayon::current_num_threads());
    let (mut worst, mut state) = (0.0f32, None);
    for &id in &ids {
        let got = stepper.feed(id).unwrap().to_vec();
        let (want, fin) = m.next_logits(&[id], state.as_ref()).unwrap();
        state = Some(fin);
        let scale = want.iter().fold(1e-3f32, |a, v| a.max(v.abs()));
        for (g, w) in got.iter().zip(&want) {
            worst = worst.max((g - w).abs() / scale);
        }
    }
    worst
}

#[test]
fn stepper_matches_the_sequence_forward_pass() {
    // Two threads split H 150 into 80 + 70 units, three into 64 + 64 + 22.
    for threads in [2, 3] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            for cell in CellKind::ALL {
                // (vocab, embed, hidden): table, no table (vocab ≫ embed), split units,
                // one-hot inputs (embed 0).
                for (vocab, embed, hidden) in
                    [(30, 8, 40), (100, 8, 24), (20, 16, 150), (30, 0, 40)]
                {
                    let mut m = model(cell, vocab, embed, hidden);
                    let at = format!("{cell} V{vocab} E{embed} H{hidden} on {threads} threads");
                    let e = worst_error(&mut m, Weights::F32);
                    assert!(e < 2e-5, "{at} f32: {e}");
                    let e = worst_error(&mut m, Weights::Bf16);
                    assert!(e < 3e-2, "{at} bf16: {e}");
                    // Both operands rounded to 255 levels (0.4–1.9 % seen).
                    let e = worst_error(&mut m, Weights::Int8);
                    assert!(e < 4e-2, "{at} int8: {e}");
                }
            }
        });
    }
}

/// Alternate characters read the weights in different orders (forward, with each
/// layer's recurrent product computed in the job of the layer below, and backward):
/// a stepper one character out of phase with another gives the same bits, and
/// three layers (where a job both uses and computes products ahead) match the
/// sequence pass.
#[test]
fn the_order_of_reads_changes_no_logit() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    pool.install(|| {
        for cell in CellKind::ALL {
            let mut m = deep_model(cell, 20, 16, 150, 3);
            let e = worst_error(&mut m, Weights::F32);
            assert!(e < 2e-5, "{cell} 3 layers: {e}");
            for weights in [Weights::F32, Weights::Bf16, Weights::Int8] {
                let mut a = Stepper::new(&m, weights).unwrap();
                a.set_threads(2);
                let mut b = a.clone();
                b.feed(1).unwrap();
                b.reset();
                for i in 0..6 {
                    let id = (i * 7 + 3) % 20;
                    let bits = |l: &[f32]| l.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                    let want = bits(a.feed(id).unwrap());
                    assert_eq!(
                        bits(b.feed(id).unwrap()),
                        want,
                        "{cell} {weights:?} char {i}"
                    );
                }
            }
        }
    });
}

/// A step is split between the pool's threads where the weights a layer step reads
/// are large enough to repay the handoff; a small model starts on one thread and
/// ends, once it has timed both, on one or two, whatever the pool; `set_threads`
/// overrides the choice.
#[test]
fn only_large_models_split_their_steps() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(4)
        .build()
        .unwrap();
    pool.install(|| {
        let small = model(CellKind::Lstm, 30, 8, 64);
        let large = model(CellKind::Lstm, 30, 8, 512);
        for weights in [Weights::F32, Weights::Bf16, Weights::Int8] {
            let mut s = Stepper::new(&small, weights).unwrap();
            assert_eq!(s.threads(), 1, "{weights:?}");
            let mut seen = [false; 3];
            let mut n = 0;
            while s.tuning() {
                s.feed(n % 30).unwrap();
                seen[s.threads()] = true;
                n += 1;
                assert!(n < 100_000, "the tuning ends");
            }
            assert_eq!(
                seen,
                [false, true, true],
                "{weights:?}: one thread and two timed"
            );
            assert!(s.threads() <= 2, "{weights:?}");
            // Set threads stay set: the split is no longer timed.
            s.set_threads(4);
            for i in 0..1000 {
                s.feed(i % 30).unwrap();
                assert_eq!(s.threads(), 4, "{weights:?}");
            }
            s.set_threads(0);
            assert_eq!(s.threads(), 1, "{weights:?}");
            let mut l = Stepper::new(&large, weights).unwrap();
            assert_eq!(l.threads(), 4, "{weights:?}");
            let mut i = 0;
            while l.tuning() {
                l.feed(i % 30).unwrap();
                assert_eq!(l.threads(), 4, "{weights:?}");
                i += 1;
                assert!(i < 100_000, "the tuning ends");
            }
        }
    });
}

/// The state lives with the layers, not the shares: a stepper whose threads change
/// mid-sequence (its units and output columns shared out anew) carries on as one that
/// kept them, for every cell and precision, and `state` reads the same.
#[test]
fn changing_the_threads_carries_the_state_on() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(3)
        .build()
        .unwrap();
    pool.install(|| {
        for cell in CellKind::ALL {
            let m = model(cell, 20, 16, 150);
            for (weights, tol) in [
                (Weights::F32, 1e-5),
                (Weights::Bf16, 1e-2),
                (Weights::Int8, 5e-2),
            ] {
                let mut kept = Stepper::new(&m, weights).unwrap();
                kept.set_threads(2);
                let mut moved = kept.clone();
                for i in 0..8 {
                    if i == 3 {
                        moved.set_threads(3);
                    }
                    if i == 6 {
                        moved.set_threads(1);
                    }
                    let id = (i * 5 + 1) % 20;
                    let want = kept.feed(id).unwrap().to_vec();
                    let got = moved.feed(id).unwrap();
                    let scale = want.iter().fold(1e-3f32, |a, v| a.max(v.abs()));
                    for (g, w) in got.iter().zip(&want) {
                        assert!(
                            (g - w).abs() <= tol * scale,
                            "{cell} {weights:?} char {i}: {g} vs {w}"
                        );
                    }
                }
                for l in 0..2 {
                    let (kh, kc) = kept.state(l);
                    let (mh, mc) = moved.state(l);
                    for (a, b) in kh.iter().chain(kc).zip(mh.iter().chain(mc)) {
                        assert!(
                            (a - b).abs() <= tol,
                            "{cell} {weights:?} layer {l}: {a} vs {b}"
                        );
                    }
                }
            }
        }
    });
}

#[test]
fn reset_and_bad_ids() {
    let m = model(CellKind::Lstm, 10, 4, 8);
    let mut s = Stepper::new(&m, Weights::F32).unwrap();
    let first = s.feed(3).unwrap().to_vec();
    s.feed(5).unwrap();
    s.reset();
    assert_eq!(s.feed(3).unwrap(), &first[..]);
    let err = s.feed(10).unwrap_err().to_string();
    assert!(err.contains("outside the vocabulary"), "{err}");
}

#[test]
fn generation_is_reproducible_and_greedy_follows_the_logits() {
    let m = model(CellKind::Gru, 12, 6, 32);
    let run = |cfg: &SamplingConfig, seed| {
        let mut text = String::new();
        generate(&m, "AB", 40, cfg, &mut Rng::new(seed), &mut |c| {
            text.push(c);
            Ok(())
        })
        .unwrap();
        text
    };
    let cfg = SamplingConfig::default();
    assert_eq!(run(&cfg, 3), run(&cfg, 3));
    assert_eq!(run(&cfg, 3).chars().count(), 40);
    // Greedy text equals the argmax chain of the sequence forward pass.
    let greedy = SamplingConfig {
        temperature: 0.0,
        ..Default::default()
    };
    let mut m2 = m.clone();
    let mut ids = m2.vocab().encode("AB").unwrap();
    let mut want = String::new();
    for _ in 0..40 {
        let (logits, _) = m2.next_logits(&ids, None).unwrap();
        let next = (0..logits.len())
            .max_by(|&a, &b| logits[a].total_cmp(&logits[b]))
            .unwrap();
        want.push(m2.vocab().char(next));
        ids.push(next);
    }
    assert_eq!(run(&greedy, 0), want);
    let bad = SamplingConfig {
        temperature: -1.0,
        ..Default::default()
    };
    let mut sink = |_c: char| Ok(());
    assert!(generate(&m, "AB", 5, &bad, &mut Rng::new(0), &mut sink).is_err());
    assert!(generate(&m, "Z!", 5, &cfg, &mut Rng::new(0), &mut sink).is_err());
}

/// A clone carries the state on with threads of its own: both continue alike, and the
/// recorded gates of a split layer equal those of one thread.
#[test]
fn clones_and_gates_across_shares() {
    let m = model(CellKind::Lstm, 20, 16, 150);
    let split = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let (logits, gates) = split.install(|| {
        let mut s = Stepper::new(&m, Weights::F32).unwrap();
        s.set_threads(2);
        assert_eq!(s.threads(), 2);
        s.record_gates(true);
        s.feed(3).unwrap();
        let mut copy = s.clone();
        let a = s.feed(4).unwrap().to_vec();
        let b = copy.feed(4).unwrap().to_vec();
        assert_eq!(a, b);
        (a, copy.gates(1).to_vec())
    });
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    one.install(|| {
        let mut s = Stepper::new(&m, Weights::F32).unwrap();
        s.record_gates(true);
        s.feed(3).unwrap();
        let got = s.feed(4).unwrap();
        for (g, w) in got.iter().zip(&logits) {
            assert!((g - w).abs() < 1e-5, "{g} vs {w}");
        }
        for (g, w) in s.gates(1).iter().zip(&gates) {
            assert!((g - w).abs() < 1e-5, "gate {g} vs {w}");
        }
        assert_eq!(s.gates(1).len(), 4 * 150);
    });
}
