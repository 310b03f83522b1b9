//! Bar charts the benchmarks draw into `docs/charts/` (SVG, which GitHub and browsers
//! render), so a reader can look rather than read. Included by each bench that draws one.

/// One bar: its label, its value, and whether it is one of ours (drawn in blue; peers in
/// grey).
pub struct Bar {
    pub label: String,
    pub value: f64,
    pub ours: bool,
}

impl Bar {
    pub fn new(label: impl Into<String>, value: f64, ours: bool) -> Bar {
        Bar {
            label: label.into(),
            value,
            ours,
        }
    }
}

/// Draws `bars` as a horizontal bar chart into `docs/charts/NAME`, each labelled with its
/// value in `unit`. Prints where it went, or why it could not be written.
pub fn write(name: &str, title: &str, unit: &str, bars: &[Bar]) {
    if bars.is_empty() {
        return;
    }
    let (label_w, bar_w, row_h, top) = (330.0, 360.0, 26.0, 40.0);
    let max = bars
        .iter()
        .map(|b| b.value)
        .fold(0.0f64, f64::max)
        .max(1e-9);
    let height = top + row_h * bars.len() as f64 + 10.0;
    let width = label_w + bar_w + 90.0;
    let escape = |t: &str| {
        t.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         font-family=\"sans-serif\" font-size=\"13\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"22\" font-weight=\"bold\">{}</text>\n",
        escape(title)
    );
    for (i, bar) in bars.iter().enumerate() {
        let y = top + row_h * i as f64;
        let w = (bar.value / max * bar_w).max(1.0);
        let fill = if bar.ours { "#2f6fdf" } else { "#9aa7b8" };
        svg += &format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\n\
             <rect x=\"{label_w}\" y=\"{}\" width=\"{w:.1}\" height=\"{}\" fill=\"{fill}\"/>\n\
             <text x=\"{:.1}\" y=\"{}\">{:.1} {unit}</text>\n",
            label_w - 8.0,
            y + 17.0,
            escape(&bar.label),
            y + 4.0,
            row_h - 8.0,
            label_w + w + 6.0,
            y + 17.0,
            bar.value,
        );
    }
    svg += "</svg>\n";
    let dir = crate::common::root().join("docs/charts");
    let written = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(dir.join(name), svg));
    match written {
        Ok(()) => println!("(chart: docs/charts/{name})\n"),
        Err(e) => println!("(chart docs/charts/{name} not written: {e})\n"),
    }
}
