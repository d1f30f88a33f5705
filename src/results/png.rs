//! `sweep report DIR --png OUT`: the report's main plots as PNG images, drawn with plotters'
//! bitmap backend into memory and written by `encode_png` (uncompressed deflate blocks: plotters'
//! own encoder would pull in image/flate2, which would rebuild polars with other features). Text
//! is drawn with the vendored DejaVu Sans (assets/fonts, its LICENSE beside it): no system fonts.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::results::html::{collect, AxisScale, ReportData, TrialView};
use crate::results::{file_at, io_at, Result};

const FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
const SIZE: (u32, u32) = (1000, 600);
const BEST: RGBColor = RGBColor(242, 142, 43);
const OTHER: RGBColor = RGBColor(78, 121, 167);
const FAILED: RGBColor = RGBColor(192, 57, 43);

/// Why a plot could not be drawn (the file it was for is named by the caller).
#[derive(Debug, Clone, thiserror::Error)]
pub enum PlotError {
    #[error("the bundled font cannot be read")]
    Font,
    /// plotters' own error, as text: its error types borrow the backend's.
    #[error("drawing failed: {0}")]
    Draw(String),
}

impl PlotError {
    fn draw(e: impl std::fmt::Display) -> Self {
        PlotError::Draw(e.to_string())
    }
}

/// A drawn and encoded image, or why not.
type Image = std::result::Result<Vec<u8>, PlotError>;

fn font() -> std::result::Result<(), PlotError> {
    static DONE: OnceLock<bool> = OnceLock::new();
    let registered = *DONE.get_or_init(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).is_ok()
    });
    if registered {
        Ok(())
    } else {
        Err(PlotError::Font)
    }
}

/// Draws into an RGB buffer of `SIZE` with `draw` and encodes it.
fn plot(
    draw: impl FnOnce(
        &DrawingArea<BitMapBackend, plotters::coord::Shift>,
    ) -> std::result::Result<(), Box<dyn std::error::Error>>,
) -> Image {
    font()?;
    let (w, h) = SIZE;
    let mut buf = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(PlotError::draw)?;
        draw(&root).map_err(PlotError::draw)?;
        root.present().map_err(PlotError::draw)?;
    }
    Ok(encode_png(&buf, w, h))
}

fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.08).max(1e-6);
    (lo - pad, hi + pad)
}

fn label(t: &TrialView) -> String {
    format!("trial {:04}", t.trial)
}

fn learning_curves(d: &ReportData) -> Image {
    plot(|root| {
        let (x0, x1) = range(
            d.trials
                .iter()
                .flat_map(|t| t.steps.iter().map(|s| s.0 as f64)),
        );
        let (y0, y1) = range(d.trials.iter().flat_map(|t| t.steps.iter().map(|s| s.1)));
        let mut chart = ChartBuilder::on(root)
            .caption(
                format!("{}: train loss per step (best thick orange)", d.name),
                ("sans-serif", 22),
            )
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d(x0.max(0.0)..x1, y0..y1)?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc("train loss")
            .draw()?;
        // The best last, so it is drawn on top.
        let mut order: Vec<&TrialView> = d.trials.iter().filter(|t| !t.steps.is_empty()).collect();
        order.sort_by_key(|t| t.best);
        for t in order {
            let (color, width) = match (t.best, t.status.as_str()) {
                (true, _) => (BEST, 4),
                (false, "finished") => (RGBColor(150, 170, 200), 1),
                _ => (FAILED, 1),
            };
            let series = chart.draw_series(LineSeries::new(
                t.steps.iter().map(|(s, l)| (*s as f64, *l)),
                ShapeStyle::from(&color).stroke_width(width),
            ))?;
            if t.best {
                series
                    .label(label(t))
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BEST));
            }
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        Ok(())
    })
}

fn by_param(d: &ReportData, p: &str) -> Image {
    let done: Vec<&TrialView> = d
        .trials
        .iter()
        .filter(|t| t.status == "finished" && t.metric.is_some())
        .collect();
    let all_numbers = done
        .iter()
        .all(|t| t.params.get(p).is_some_and(|v| v.is_number()));
    // The axis follows how the sweep file draws the parameter (`AxisScale`): a list of values
    // is categories even when they are numbers.
    let scale = d.axes.get(p).copied().unwrap_or(if all_numbers {
        AxisScale::Linear
    } else {
        AxisScale::Category
    });
    let numeric = all_numbers && scale != AxisScale::Category;
    let text = |v: Option<&serde_json::Value>| -> String {
        match v {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(v) => v.to_string(),
            None => String::new(),
        }
    };
    let mut values: Vec<&serde_json::Value> = done.iter().filter_map(|t| t.params.get(p)).collect();
    values.sort_by(|a, b| match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x.total_cmp(&y),
        _ => text(Some(a)).cmp(&text(Some(b))),
    });
    let mut cats: Vec<String> = values.into_iter().map(|v| text(Some(v))).collect();
    cats.dedup();
    let x_of = |t: &TrialView| -> f64 {
        let v = t.params.get(p);
        if numeric {
            v.and_then(|v| v.as_f64()).unwrap_or(0.0)
        } else {
            let s = text(v);
            cats.iter().position(|c| *c == s).unwrap_or(0) as f64
        }
    };
    let xs: Vec<f64> = done.iter().map(|t| x_of(t)).collect();
    let log = numeric && scale == AxisScale::Log && xs.iter().all(|x| *x > 0.0);
    plot(|root| {
        let (y0, y1) = range(done.iter().filter_map(|t| t.metric));
        let (x0, x1) = if numeric {
            range(xs.iter().map(|x| if log { x.log10() } else { *x }))
        } else {
            (-0.5, cats.len() as f64 - 0.5)
        };
        let mut chart = ChartBuilder::on(root)
            .caption(format!("{} by {p}", d.metric), ("sans-serif", 22))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d(x0..x1, y0..y1)?;
        let fmt = |x: &f64| -> String {
            if !numeric {
                let i = x.round();
                if (x - i).abs() < 1e-6 && i >= 0.0 {
                    return cats.get(i as usize).cloned().unwrap_or_default();
                }
                return String::new();
            }
            if log {
                format!("{:.1e}", 10f64.powf(*x))
            } else {
                format!("{x:.3}")
            }
        };
        chart
            .configure_mesh()
            .x_desc(if log {
                format!("{p} (log scale)")
            } else {
                p.to_string()
            })
            .y_desc(d.metric.as_str())
            .x_label_formatter(&fmt)
            .x_labels(if numeric { 8 } else { cats.len() * 2 + 1 })
            .draw()?;
        chart.draw_series(done.iter().zip(&xs).map(|(t, x)| {
            let x = if log { x.log10() } else { *x };
            Circle::new(
                (x, t.metric.unwrap_or(0.0)),
                if t.best { 8 } else { 6 },
                ShapeStyle::from(if t.best { &BEST } else { &OTHER }).filled(),
            )
        }))?;
        Ok(())
    })
}

fn importance(d: &ReportData) -> Image {
    plot(|root| {
        let n = d.importance.len().max(1);
        let mut chart = ChartBuilder::on(root)
            .caption(
                "parameter importance: share of variance (main effects)",
                ("sans-serif", 22),
            )
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(140)
            .build_cartesian_2d(0.0..1.0, -0.5..(n as f64 - 0.5))?;
        let names: Vec<String> = d.importance.iter().map(|i| i.param.clone()).collect();
        let fmt = |y: &f64| -> String {
            let i = y.round();
            if (y - i).abs() < 1e-6 && i >= 0.0 {
                names.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        };
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_label_formatter(&fmt)
            .y_labels(n * 2 + 1)
            .x_desc("share of the metric's variance")
            .draw()?;
        chart.draw_series(d.importance.iter().enumerate().map(|(i, imp)| {
            let y = i as f64;
            Rectangle::new(
                [(0.0, y - 0.35), (imp.share, y + 0.35)],
                RGBColor(89, 161, 79).filled(),
            )
        }))?;
        Ok(())
    })
}

fn memory(d: &ReportData) -> Image {
    let pts: Vec<(f64, f64, bool)> = d
        .trials
        .iter()
        .filter_map(|t| Some((t.estimated_mb?, t.peak_rss_mb.filter(|m| *m > 0.0)?, t.best)))
        .collect();
    plot(|root| {
        let hi = pts.iter().map(|p| p.0.max(p.1)).fold(1.0, f64::max) * 1.1;
        let mut chart = ChartBuilder::on(root)
            .caption(
                "memory: plan-time estimate against measured peak",
                ("sans-serif", 22),
            )
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d(0.0..hi, 0.0..hi)?;
        chart
            .configure_mesh()
            .x_desc("estimated MB")
            .y_desc("measured peak MB")
            .draw()?;
        chart.draw_series(LineSeries::new(
            [(0.0, 0.0), (hi, hi)],
            ShapeStyle::from(&RGBColor(150, 150, 150)),
        ))?;
        chart.draw_series(pts.iter().map(|(e, m, best)| {
            Circle::new(
                (*e, *m),
                6,
                ShapeStyle::from(if *best { &BEST } else { &OTHER }).filled(),
            )
        }))?;
        Ok(())
    })
}

/// Colours of the methods in the cost plot, in the order of `ReportData::costs`.
const PALETTE: [RGBColor; 6] = [
    RGBColor(78, 121, 167),
    RGBColor(242, 142, 43),
    RGBColor(89, 161, 79),
    RGBColor(225, 87, 89),
    RGBColor(118, 183, 178),
    RGBColor(176, 122, 161),
];

/// Accuracy against a cost (log scale), one colour per method: which method is as good for
/// less. `pick` chooses the cost: training seconds per epoch, or seconds per evaluation.
fn accuracy_by_cost(d: &ReportData, what: &str, pick: fn(&TrialView) -> Option<f64>) -> Image {
    let pts: Vec<(f64, f64, usize)> = d
        .trials
        .iter()
        .filter(|t| t.status == "finished" || t.status == "pruned")
        .filter_map(|t| {
            let m = t.method.as_deref()?;
            let i = d.costs.iter().position(|c| c.method == m)?;
            Some((pick(t).filter(|c| *c > 0.0)?.log10(), t.accuracy?, i))
        })
        .collect();
    plot(|root| {
        let (x0, x1) = range(pts.iter().map(|p| p.0));
        let (y0, y1) = range(pts.iter().map(|p| p.1));
        let mut chart = ChartBuilder::on(root)
            .caption(format!("accuracy against {what}"), ("sans-serif", 22))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d(x0..x1, y0..y1)?;
        chart
            .configure_mesh()
            .x_desc(format!("{what} (log scale)"))
            .y_desc("accuracy")
            .x_label_formatter(&|x: &f64| format!("{:.3}", 10f64.powf(*x)))
            .draw()?;
        for (i, c) in d.costs.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            chart
                .draw_series(
                    pts.iter()
                        .filter(|p| p.2 == i)
                        .map(|p| Circle::new((p.0, p.1), 7, color.filled())),
                )?
                .label(c.method.clone())
                .legend(move |(x, y)| Circle::new((x + 10, y), 6, color.filled()));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        Ok(())
    })
}

/// Writes learning_curves.png, one `METRIC_by_PARAM.png` per swept parameter, importance.png,
/// memory.png and, when trials have a method, accuracy against each cost
/// (`accuracy_by_train_seconds.png`, `accuracy_by_eval_seconds.png`) into `out`; returns their
/// paths.
pub fn write(dir: &Path, out: &Path) -> Result<Vec<PathBuf>> {
    let d = collect(dir)?;
    std::fs::create_dir_all(out).map_err(io_at(out))?;
    let mut images: Vec<(String, Image)> = vec![
        ("learning_curves.png".into(), learning_curves(&d)),
        ("importance.png".into(), importance(&d)),
        ("memory.png".into(), memory(&d)),
    ];
    for p in &d.swept {
        images.push((format!("{}_by_{p}.png", d.metric), by_param(&d, p)));
    }
    if !d.costs.is_empty() {
        images.push((
            "accuracy_by_train_seconds.png".into(),
            accuracy_by_cost(&d, "training seconds per epoch", |t| {
                t.train_seconds_per_epoch
            }),
        ));
        images.push((
            "accuracy_by_eval_seconds.png".into(),
            accuracy_by_cost(&d, "seconds per evaluation", |t| t.seconds_per_evaluation),
        ));
    }
    let mut written = Vec::new();
    for (name, bytes) in images {
        let path = out.join(name);
        let bytes = bytes.map_err(|e| file_at(&path, e))?;
        std::fs::write(&path, bytes).map_err(io_at(&path))?;
        written.push(path);
    }
    Ok(written)
}

fn crc32(chunks: &[&[u8]]) -> u32 {
    static TABLE: OnceLock<[u32; 256]> = OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (n, entry) in t.iter_mut().enumerate() {
            let mut c = n as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            *entry = c;
        }
        t
    });
    let mut c = 0xFFFF_FFFFu32;
    for b in chunks.iter().flat_map(|c| c.iter()) {
        c = table[((c ^ *b as u32) & 0xFF) as usize] ^ (c >> 8);
    }
    c ^ 0xFFFF_FFFF
}

fn adler32(data: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for chunk in data.chunks(5552) {
        for x in chunk {
            a += *x as u32;
            b += a;
        }
        a %= 65521;
        b %= 65521;
    }
    (b << 16) | a
}

/// An 8-bit RGB PNG of `rgb` (rows top to bottom), as zlib stored (uncompressed) blocks.
pub fn encode_png(rgb: &[u8], w: u32, h: u32) -> Vec<u8> {
    let row = (w * 3) as usize;
    let mut raw = Vec::with_capacity((row + 1) * h as usize);
    for line in rgb.chunks(row).take(h as usize) {
        raw.push(0); // filter: none
        raw.extend_from_slice(line);
    }
    let mut z = vec![0x78, 0x01];
    let blocks: Vec<&[u8]> = raw.chunks(65_535).collect();
    for (i, block) in blocks.iter().enumerate() {
        z.push(u8::from(i + 1 == blocks.len()));
        let len = block.len() as u16;
        z.extend_from_slice(&len.to_le_bytes());
        z.extend_from_slice(&(!len).to_le_bytes());
        z.extend_from_slice(block);
    }
    z.extend_from_slice(&adler32(&raw).to_be_bytes());
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8; 4], data: &[u8]| {
        png.extend_from_slice(&(data.len() as u32).to_be_bytes());
        png.extend_from_slice(kind);
        png.extend_from_slice(data);
        png.extend_from_slice(&crc32(&[kind, data]).to_be_bytes());
    };
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8 bits, RGB, deflate, no filter, no interlace
    chunk(b"IHDR", &ihdr);
    chunk(b"IDAT", &z);
    chunk(b"IEND", &[]);
    png
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_match_their_definitions() {
        assert_eq!(crc32(&[b"IEND"]), 0xAE42_6082);
        assert_eq!(crc32(&[b"123456789"]), 0xCBF4_3926);
        assert_eq!(adler32(b"Wikipedia"), 0x11E6_0398);
    }

    #[test]
    fn a_png_has_its_signature_header_and_end() {
        let png = encode_png(&[255, 0, 0, 0, 255, 0], 2, 1);
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(&png[12..16], b"IHDR");
        assert_eq!(&png[16..24], &[0, 0, 0, 2, 0, 0, 0, 1]);
        assert_eq!(&png[png.len() - 8..png.len() - 4], b"IEND");
    }
}
