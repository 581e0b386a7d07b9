//! Minimal SVG charts (no font or system library needed): a horizontal bar chart for per-layer
//! sensitivity and small-multiple histograms with the chosen clip range.

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Horizontal bars, one per (label, value, note); values may be negative.
pub fn bar_chart(title: &str, unit: &str, rows: &[(String, f64, String)]) -> String {
    let (w, row_h, left, top) = (900.0, 18.0, 360.0, 40.0);
    let h = top + row_h * rows.len() as f64 + 30.0;
    let vmax = rows.iter().map(|r| r.1.abs()).fold(1e-9, f64::max);
    let scale = (w - left - 140.0) / vmax;
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">"#
    );
    s += &format!(
        r#"<rect width="100%" height="100%" fill="white"/><text x="10" y="20" font-size="14">{}</text>"#,
        esc(title)
    );
    for (i, (label, v, note)) in rows.iter().enumerate() {
        let y = top + i as f64 * row_h;
        let bw = (v.abs() * scale).max(0.5);
        let color = if *v >= 0.0 { "#d95f02" } else { "#1b9e77" };
        s += &format!(r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#, left - 6.0, y + 12.0, esc(label));
        s += &format!(r#"<rect x="{left}" y="{}" width="{bw:.1}" height="{}" fill="{color}"/>"#, y + 2.0, row_h - 4.0);
        s += &format!(r#"<text x="{:.1}" y="{}">{v:.2} {unit} {}</text>"#, left + bw + 4.0, y + 12.0, esc(note));
    }
    s += "</svg>";
    s
}

/// Small-multiple histograms: (name, bin counts over [0, hist_max] of |x| for positive and
/// negative values, hist_max, chosen lo, chosen hi, observed min, observed max).
pub struct Hist<'a> {
    pub name: &'a str,
    pub pos: &'a [u64],
    pub neg: &'a [u64],
    pub hist_max: f32,
    pub lo: f32,
    pub hi: f32,
}

pub fn histograms(title: &str, hs: &[Hist]) -> String {
    let (cw, ch, cols) = (300.0, 150.0, 3usize);
    let rows = hs.len().div_ceil(cols);
    let (w, h) = (cw * cols as f64 + 20.0, ch * rows as f64 + 40.0);
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="10">"#
    );
    s += &format!(
        r#"<rect width="100%" height="100%" fill="white"/><text x="10" y="20" font-size="14">{}</text>"#,
        esc(title)
    );
    const GROUP: usize = 32; // merge bins for drawing
    for (k, hg) in hs.iter().enumerate() {
        let (x0, y0) = (10.0 + (k % cols) as f64 * cw, 35.0 + (k / cols) as f64 * ch);
        let (pw, ph) = (cw - 20.0, ch - 40.0);
        // signed axis from -hist_max to hist_max
        let nb = hs[k].pos.len() / GROUP;
        let mut bars: Vec<(f64, f64)> = vec![]; // (center in [-1,1], log count)
        for b in 0..nb {
            let p: u64 = hg.pos[b * GROUP..(b + 1) * GROUP].iter().sum();
            let n: u64 = hg.neg[b * GROUP..(b + 1) * GROUP].iter().sum();
            let c = (b as f64 + 0.5) / nb as f64;
            bars.push((c, (p as f64 + 1.0).ln()));
            bars.push((-c, (n as f64 + 1.0).ln()));
        }
        let top = bars.iter().map(|b| b.1).fold(1e-9, f64::max);
        let xm = |v: f64| x0 + pw / 2.0 + v * pw / 2.0;
        s += &format!(r##"<rect x="{x0}" y="{y0}" width="{pw}" height="{ph}" fill="none" stroke="#ccc"/>"##);
        let bw = pw / 2.0 / nb as f64;
        for (c, v) in bars {
            let bh = v / top * ph;
            s += &format!(
                r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="#7570b3"/>"##,
                xm(c) - bw / 2.0,
                y0 + ph - bh,
                bw,
                bh
            );
        }
        let m = hg.hist_max.max(1e-12) as f64;
        for (v, label) in [(hg.lo as f64 / m, "lo"), (hg.hi as f64 / m, "hi")] {
            s += &format!(
                r##"<line x1="{x:.1}" y1="{y0}" x2="{x:.1}" y2="{}" stroke="#e7298a" stroke-width="1.5"/><text x="{x:.1}" y="{}" fill="#e7298a" text-anchor="middle">{label}</text>"##,
                y0 + ph,
                y0 - 2.0,
                x = xm(v.clamp(-1.0, 1.0))
            );
        }
        let name: String = hg.name.chars().rev().take(45).collect::<Vec<_>>().into_iter().rev().collect();
        s += &format!(
            r#"<text x="{x0}" y="{}">{}</text><text x="{x0}" y="{}">clip [{:.3}, {:.3}] of ±{:.3} (log counts)</text>"#,
            y0 + ph + 12.0,
            esc(&name),
            y0 + ph + 24.0,
            hg.lo,
            hg.hi,
            hg.hist_max
        );
    }
    s += "</svg>";
    s
}

/// Line curves over epochs on one chart per entry: (chart title, series of (name, points)).
pub fn curves(title: &str, charts: &[(&str, Vec<(&str, Vec<(f64, f64)>)>)]) -> String {
    let (cw, ch) = (440.0, 260.0);
    let (w, h) = (cw * charts.len() as f64 + 20.0, ch + 50.0);
    let colors =
        ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666", "#1f78b4", "#b2df8a"];
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="10">"#
    );
    s += &format!(
        r#"<rect width="100%" height="100%" fill="white"/><text x="10" y="20" font-size="14">{}</text>"#,
        esc(title)
    );
    for (k, (name, series)) in charts.iter().enumerate() {
        let (x0, y0) = (50.0 + k as f64 * cw, 45.0);
        let (pw, ph) = (cw - 80.0, ch - 50.0);
        let pts: Vec<(f64, f64)> =
            series.iter().flat_map(|s| s.1.iter().copied()).filter(|p| p.1.is_finite()).collect();
        if pts.is_empty() {
            continue;
        }
        let (xmin, xmax) = pts.iter().fold((f64::MAX, f64::MIN), |a, p| (a.0.min(p.0), a.1.max(p.0)));
        let (ymin, ymax) = pts.iter().fold((f64::MAX, f64::MIN), |a, p| (a.0.min(p.1), a.1.max(p.1)));
        let (xr, yr) = ((xmax - xmin).max(1e-9), (ymax - ymin).max(1e-9));
        let px = |x: f64| x0 + (x - xmin) / xr * pw;
        let py = |y: f64| y0 + ph - (y - ymin) / yr * ph;
        s += &format!(r#"<text x="{x0}" y="{}" font-size="12">{}</text>"#, y0 - 8.0, esc(name));
        s += &format!(r##"<rect x="{x0}" y="{y0}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>"##);
        s += &format!(r#"<text x="{}" y="{}" text-anchor="end">{ymax:.4}</text>"#, x0 - 3.0, y0 + 8.0);
        s += &format!(r#"<text x="{}" y="{}" text-anchor="end">{ymin:.4}</text>"#, x0 - 3.0, y0 + ph);
        s += &format!(r#"<text x="{x0}" y="{}">epoch {xmin}</text>"#, y0 + ph + 14.0);
        s += &format!(r#"<text x="{}" y="{}" text-anchor="end">{xmax}</text>"#, x0 + pw, y0 + ph + 14.0);
        for (j, (sname, p)) in series.iter().enumerate() {
            let c = colors[j % colors.len()];
            let path: Vec<String> =
                p.iter().filter(|q| q.1.is_finite()).map(|q| format!("{:.1},{:.1}", px(q.0), py(q.1))).collect();
            s += &format!(r#"<polyline points="{}" fill="none" stroke="{c}" stroke-width="2"/>"#, path.join(" "));
            for q in p.iter().filter(|q| q.1.is_finite()) {
                s += &format!(r#"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{c}"/>"#, px(q.0), py(q.1));
            }
            s += &format!(
                r#"<text x="{}" y="{}" fill="{c}">{}</text>"#,
                x0 + pw - 120.0,
                y0 + 14.0 + 12.0 * j as f64,
                esc(sname)
            );
        }
    }
    s += "</svg>";
    s
}
