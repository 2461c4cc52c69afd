//! The running summary of the consumption CSV: constant memory whatever the number of rows.

use std::fmt;

/// How many postcodes the "top" table lists.
const TOP: usize = 5;

/// One postcode, as kept for the top table.
#[derive(Debug, Clone)]
struct Row {
    postcode: String,
    meters: u64,
    total_kwh: f64,
}

/// Column positions, found by name in the header.
#[derive(Debug)]
struct Columns {
    postcode: usize,
    meters: usize,
    total: usize,
    mean: usize,
}

/// Totals so far, and the top postcodes by total consumption.
#[derive(Debug)]
pub struct Summary {
    columns: Columns,
    postcodes: u64,
    meters: u64,
    total_kwh: f64,
    sum_of_means: f64,
    skipped: u64,
    top: Vec<Row>,
}

impl Summary {
    /// Start a summary for a CSV with this header line.
    pub fn new(header: &str) -> Result<Self, String> {
        let names: Vec<&str> = header
            .trim_end_matches('\r')
            .split(',')
            .map(str::trim)
            .collect();
        let find = |name: &str| {
            names
                .iter()
                .position(|n| *n == name)
                .ok_or_else(|| format!("the CSV header has no `{name}` column: {header:?}"))
        };
        Ok(Summary {
            columns: Columns {
                postcode: find("postcode")?,
                meters: find("num_meters")?,
                total: find("total_consumption_kwh")?,
                mean: find("mean_consumption_kwh")?,
            },
            postcodes: 0,
            meters: 0,
            total_kwh: 0.0,
            sum_of_means: 0.0,
            skipped: 0,
            top: Vec::with_capacity(TOP + 1),
        })
    }

    /// Add one data line. Blank lines are ignored; malformed ones are counted as skipped.
    pub fn add(&mut self, line: &str) {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            return;
        }
        match self.parse(line) {
            Some((row, mean)) => {
                self.postcodes += 1;
                self.meters += row.meters;
                self.total_kwh += row.total_kwh;
                self.sum_of_means += mean;
                self.push_top(row);
            }
            None => self.skipped += 1,
        }
    }

    fn parse(&self, line: &str) -> Option<(Row, f64)> {
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let c = &self.columns;
        let row = Row {
            postcode: fields.get(c.postcode)?.to_string(),
            meters: fields.get(c.meters)?.parse().ok()?,
            total_kwh: fields.get(c.total)?.parse().ok()?,
        };
        let mean: f64 = fields.get(c.mean)?.parse().ok()?;
        Some((row, mean))
    }

    /// Keep `top` sorted by total, largest first, and at most `TOP` long.
    fn push_top(&mut self, row: Row) {
        if self.top.len() == TOP
            && self
                .top
                .last()
                .is_some_and(|last| last.total_kwh >= row.total_kwh)
        {
            return;
        }
        let at = self.top.partition_point(|r| r.total_kwh >= row.total_kwh);
        self.top.insert(at, row);
        self.top.truncate(TOP);
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mean_of_means = if self.postcodes == 0 {
            0.0
        } else {
            self.sum_of_means / self.postcodes as f64
        };
        writeln!(f, "postcodes:          {}", self.postcodes)?;
        writeln!(f, "meters:             {}", self.meters)?;
        writeln!(f, "total kWh:          {:.1}", self.total_kwh)?;
        writeln!(f, "mean of means kWh:  {mean_of_means:.1}")?;
        if self.skipped > 0 {
            writeln!(f, "malformed rows:     {} (skipped)", self.skipped)?;
        }
        writeln!(f)?;
        writeln!(f, "top {TOP} postcodes by total consumption:")?;
        writeln!(
            f,
            "{:>4}  {:<10} {:>8} {:>16}",
            "rank", "postcode", "meters", "total kWh"
        )?;
        for (rank, row) in self.top.iter().enumerate() {
            writeln!(
                f,
                "{:>4}  {:<10} {:>8} {:>16.1}",
                rank + 1,
                row.postcode,
                row.meters,
                row.total_kwh
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str =
        "postcode,num_meters,total_consumption_kwh,mean_consumption_kwh,median_consumption_kwh";

    #[test]
    fn sums_and_ranks() {
        let mut s = Summary::new(HEADER).expect("header");
        for i in 0..10u64 {
            s.add(&format!("P{i},{i},{}.5,{i}.0,1.0\r", i * 100));
        }
        s.add("");
        s.add("bad,row");
        assert_eq!(s.postcodes, 10);
        assert_eq!(s.meters, 45);
        assert_eq!(s.skipped, 1);
        let top: Vec<&str> = s.top.iter().map(|r| r.postcode.as_str()).collect();
        assert_eq!(top, ["P9", "P8", "P7", "P6", "P5"]);
    }

    #[test]
    fn missing_column_is_an_error() {
        assert!(Summary::new("postcode,num_meters").is_err());
    }
}
