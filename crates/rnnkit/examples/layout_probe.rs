use rnnkit::kernel::{matmul, MatMut, MatRef};
use std::time::Instant;
fn main() {
    let (b, h) = (16usize, 384usize);
    let g = 4 * h;
    let w: Vec<f32> = (0..g * h).map(|i| (i % 7) as f32 * 0.01).collect();
    let wt: Vec<f32> = (0..g * h).map(|i| (i % 5) as f32 * 0.01).collect();
    let x: Vec<f32> = (0..b * h).map(|i| (i % 3) as f32).collect();
    let mut out = vec![0.0f32; b * g];
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    pool.install(|| {
        for (name, t) in [("W row-major (transposed view)", false), ("W^T stored", true)] {
            let t0 = Instant::now();
            let n = 2000;
            for _ in 0..n {
                let wm = if t { MatRef::dense(&wt, h, g) } else { MatRef::dense(&w, g, h).t() };
                matmul(MatMut::dense(&mut out, b, g), MatRef::dense(&x, b, h), wm, false);
            }
            let s = t0.elapsed().as_secs_f64() / n as f64;
            println!("{name}: {:.1} us, {:.1} GFLOP/s", s * 1e6, 2.0 * (b * g * h) as f64 / s / 1e9);
        }
        // backward: dh[b,h] = dg[b,g] * W[g,h]
        let dg: Vec<f32> = (0..b * g).map(|i| (i % 3) as f32).collect();
        let mut dh = vec![0.0f32; b * h];
        let t0 = Instant::now();
        for _ in 0..2000 {
            matmul(MatMut::dense(&mut dh, b, h), MatRef::dense(&dg, b, g), MatRef::dense(&w, g, h), false);
        }
        let s = t0.elapsed().as_secs_f64() / 2000.0;
        println!("backward dg*W: {:.1} us, {:.1} GFLOP/s", s * 1e6, 2.0 * (b * g * h) as f64 / s / 1e9);
    });
}
