//! `gm-run classify`: the command-line side of [`gm_runtime::classify`]: arguments, the text and
//! JSON output, the progress bar, the exit status.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use gm_runtime::classify::{collect_inputs, Classifier, Labels, ModelInfo, Options, Record};
use gm_runtime::image::DecodeLimits;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::BackendChoice;

/// Classify image files with an exported model: top-k classes per image.
///
/// The images get the model's own evaluation transform (for the official models: resize the
/// shorter side to 256 with Pillow-exact bicubic filtering, center crop 224, normalise), read from
/// the model's metadata. Exit status 1 if any file failed (each failure is reported, the others are
/// still classified).
#[derive(clap::Parser, Debug)]
#[command(name = "gm-run classify", version)]
pub struct ClassifyArgs {
    /// Image files (JPEG, PNG, WebP; the format is read from the content) or directories
    /// (walked recursively in name order, taking .jpg/.jpeg/.png/.webp files).
    #[arg(required = true, value_name = "IMG")]
    images: Vec<PathBuf>,
    /// Exported model (.onnx from gm-export); its metadata gives the preprocessing.
    #[arg(long)]
    model: PathBuf,
    /// Classes to report per image.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    topk: u32,
    /// Images per model call.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=4096))]
    batch: u32,
    /// Print one JSON object per image: {"path", "topk": [{"index", "label", "prob"}]}, or
    /// {"path", "error"} for a file that could not be classified.
    #[arg(long)]
    json: bool,
    /// Class names, one per line, in class order (default: the built-in ImageNet-1k names).
    #[arg(long, value_name = "FILE")]
    labels: Option<PathBuf>,
    /// Refuse images above this size, checked from the file header before decoding.
    #[arg(long, default_value_t = 100.0, value_name = "MP")]
    max_megapixels: f64,
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    backend: BackendChoice,
}

pub fn run(args: ClassifyArgs) -> Result<ExitCode> {
    if !(args.max_megapixels > 0.0 && args.max_megapixels.is_finite()) {
        bail!("--max-megapixels must be a positive number");
    }
    let info = ModelInfo::read(&args.model)?;
    let labels = match (&args.labels, info.classes) {
        (Some(path), classes) => {
            let labels = Labels::from_file(path)?;
            if let Some(c) = classes.filter(|&c| c != labels.len()) {
                bail!(
                    "--labels {}: {} names, but the model has {c} classes",
                    path.display(),
                    labels.len()
                );
            }
            labels
        }
        (None, Some(c)) if c != Labels::imagenet().len() => {
            eprintln!("gm-run: the model has {c} classes, not ImageNet's 1000: printing class numbers (--labels FILE names them)");
            Labels::numbered(c)
        }
        (None, _) => Labels::imagenet(),
    };
    let inputs = collect_inputs(&args.images);
    if inputs.is_empty() {
        bail!("no image files (.jpg, .jpeg, .png, .webp) found in the given directories");
    }
    let mut backend = crate::load_cpu(args.backend, &args.model)?;
    let options = Options {
        topk: args.topk as usize,
        batch: args.batch as usize,
        limits: DecodeLimits {
            max_pixels: (args.max_megapixels * 1e6) as u64,
        },
    };
    let backend_name = backend.name();
    let mut classifier = Classifier::new(
        backend.as_mut(),
        &args.model,
        info.preprocessing,
        labels,
        options,
    )?;

    // The bar only for runs of more than one batch, and only on a terminal (never in a pipe).
    let total = inputs.len() as u64;
    let bar = if total > u64::from(args.batch) && std::io::stderr().is_terminal() {
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} images  {per_sec}  eta {eta}")
                .context("progress bar template")?,
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut write_error: Option<std::io::Error> = None;
    let summary = classifier.run(inputs, |record: Record| {
        bar.suspend(|| {
            if let Err(e) = &record.outcome {
                eprintln!("gm-run: error: {e}");
            }
            if write_error.is_none() {
                if let Err(e) = print_record(&mut out, &record, args.json) {
                    write_error = Some(e);
                }
            }
        });
        bar.inc(1);
    })?;
    bar.finish_and_clear();
    if let Some(e) = write_error {
        return Err(e).context("writing the results to standard output");
    }
    out.flush()
        .context("writing the results to standard output")?;
    eprintln!(
        "gm-run: classified {} image(s), {} failed; backend {backend_name}: {} batch(es), \
         preprocessing {:.2} s, inference {:.2} s",
        summary.classified,
        summary.failed,
        summary.batches,
        summary.preprocess.as_secs_f64(),
        summary.inference.as_secs_f64()
    );
    Ok(if summary.failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Text: the path, then one `prob%  label  [index]` line per class. JSON: one line per file.
fn print_record(out: &mut impl Write, record: &Record, json: bool) -> std::io::Result<()> {
    if json {
        return writeln!(out, "{}", record.to_json());
    }
    let Ok(predictions) = &record.outcome else {
        return Ok(()); // reported on stderr
    };
    writeln!(out, "{}", record.path.display())?;
    for p in predictions {
        writeln!(out, "  {:6.2}%  {}  [{}]", p.prob * 100.0, p.label, p.index)?;
    }
    Ok(())
}
