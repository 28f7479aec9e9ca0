//! E-file decoder tests: every sample of `tests/data/grid/` (copied from the domain notes)
//! and every edge case of EFILE_AND_FORMATS.md §1.5, plus fuzzing.

use super::*;
use crate::text_rows::{LineDecoder, Record, Sink};

#[derive(Debug, Clone, PartialEq)]
struct Row {
    line: u64,
    class: String,
    entity: Option<String>,
    names: Vec<String>,
    fields: Vec<Option<String>>,
    object: Option<String>,
}

#[derive(Default)]
struct Got {
    rows: Vec<Row>,
    /// (line, reason)
    problems: Vec<(u64, String)>,
    skipped: usize,
    blocks: Vec<crate::text_rows::BlockInfo>,
    ends: Vec<u64>,
    schemas: Vec<u64>,
}

impl Sink for Got {
    fn record(&mut self, r: &Record<'_>) {
        self.rows.push(Row {
            line: r.line,
            class: r.block.class.clone(),
            entity: r.block.entity.clone(),
            names: r.names.to_vec(),
            fields: r.fields.iter().map(|f| f.map(str::to_string)).collect(),
            object: r.object.map(str::to_string),
        });
        self.blocks.push(r.block.clone());
        self.ends.push(r.end);
        self.schemas.push(r.schema);
    }
    fn problem(&mut self, line: u64, _end: u64, reason: String, _raw: &[u8]) {
        self.problems.push((line, reason));
    }
    fn skipped_block(&mut self) {
        self.skipped += 1;
    }
}

fn parse_with(bytes: &[u8], opts: Options) -> Got {
    let mut p = Parser::new(opts);
    let mut got = Got::default();
    let mut pos = 0u64;
    let mut rest = bytes;
    while !rest.is_empty() {
        let (line, used) = match memchr::memchr(b'\n', rest) {
            Some(i) => (&rest[..i], i + 1),
            None => (rest, rest.len()),
        };
        pos += used as u64;
        p.line(line, pos, &mut got);
        rest = &rest[used..];
    }
    p.finish(pos, &mut got);
    got
}

fn parse(text: &str) -> Got {
    parse_with(text.as_bytes(), Options::default())
}

fn sample(path: &str) -> Vec<u8> {
    let p = format!("{}/../tests/data/grid/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

fn s(x: &str) -> Option<String> {
    Some(x.to_string())
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

#[test]
fn sample_a_scada_telemetry() {
    let got = parse_with(
        &sample("ours/SG_JS_SCADA_20250313_170500.DT"),
        Options::default(),
    );
    assert_eq!(got.problems, vec![]);
    assert_eq!(got.rows.len(), 5);
    let r = &got.rows[0];
    assert_eq!(r.class, "YC");
    assert_eq!(r.entity.as_deref(), Some("江苏.苏州"));
    assert_eq!(
        r.names,
        strs(&["序号", "测点ID", "测点名称", "时间", "值", "质量码"])
    );
    assert_eq!(
        r.fields,
        vec![
            s("1"),
            s("116812234311389340"),
            s("江苏.梅村变/220kV.梅山线/有功值"),
            s("2025-03-13 17:05:00"),
            s("132.56"),
            s("0")
        ]
    );
    assert_eq!(r.line, 5);
    // Row 4: value NULL, quality 128.
    assert_eq!(got.rows[3].fields[4], None);
    assert_eq!(got.rows[3].fields[5], s("128"));
    assert_eq!(got.rows[4].fields[3], s("2025-03-13 17:04:55"));
    // The description line right after the header describes the columns.
    let b = &got.blocks[0];
    assert_eq!(b.meta[1].description.as_deref(), Some("point_id"));
    assert_eq!(
        b.meta[5].description.as_deref(),
        Some("quality(IEC104 QDS bits)")
    );
    assert_eq!(
        b.time().unwrap().to_string(),
        "2025-03-13 17:05:00",
        "Date= and Time='17-05-00'"
    );
}

#[test]
fn sample_b_telesignals_and_single_column_station() {
    let got = parse_with(
        &sample("ours/SG_JS_D5000_20250313_170432.DT"),
        Options::default(),
    );
    assert_eq!(got.problems, vec![]);
    let yx: Vec<&Row> = got.rows.iter().filter(|r| r.class == "YX").collect();
    assert_eq!(yx.len(), 3);
    assert_eq!(
        yx[1].fields,
        vec![
            s("2"),
            s("115967417384190001"),
            s("2025-03-13 17:04:32"),
            s("845"),
            s("1"),
            s("0"),
            s("江苏.梅村变/220kV.2511开关 合闸(重合)")
        ]
    );
    let st: Vec<&Row> = got.rows.iter().filter(|r| r.class == "厂站信息").collect();
    assert_eq!(st.len(), 1, "one @@ object");
    assert_eq!(st[0].names, strs(&["厂站名称", "电压等级", "投运日期"]));
    assert_eq!(
        st[0].fields,
        vec![s("梅村变"), s("220kV"), s("2009-06-30 00:00:00")]
    );
    // Bound to one class, the other block is skipped and counted.
    let got = parse_with(
        &sample("ours/SG_JS_D5000_20250313_170432.DT"),
        Options {
            block: "YX".into(),
            ..Options::default()
        },
    );
    assert_eq!(got.rows.len(), 3);
    assert_eq!(got.skipped, 1);
}

#[test]
fn sample_c_meter_readings_with_type_unit_limit_lines() {
    let got = parse_with(
        &sample("ours/SG_03_TMR_20250313_171500.DT"),
        Options::default(),
    );
    assert_eq!(got.problems, vec![]);
    assert_eq!(got.rows.len(), 3);
    let meta = &got.blocks[0].meta;
    assert_eq!(meta.len(), 11);
    assert_eq!(meta[3].type_code.as_deref(), Some("f"));
    assert_eq!(meta[3].unit.as_deref(), Some("kWh"));
    assert_eq!((meta[3].min, meta[3].max), (Some(0.0), Some(99999999.99)));
    assert_eq!((meta[4].min, meta[4].max), (Some(0.0), Some(100000.0)));
    assert_eq!((meta[5].min, meta[5].max), (Some(1.0), Some(100000.0)));
    assert_eq!(meta[1].unit, None, "'-' is no unit");
    assert_eq!((meta[6].min, meta[6].max), (None, None));
    assert_eq!((meta[10].min, meta[10].max), (Some(0.0), Some(255.0)));
    // Row 2 misses its energy values.
    assert_eq!(got.rows[1].fields[4], None);
    assert_eq!(got.rows[2].fields[4], s("-240.00"));
}

#[test]
fn sample_d_edge_cases() {
    let got = parse_with(&sample("ours/edge_cases_D.DT"), Options::default());
    assert_eq!(got.problems, vec![]);
    // `@#` transposes: one record per object column.
    let curve: Vec<&Row> = got.rows.iter().filter(|r| r.class == "曲线").collect();
    assert_eq!(curve.len(), 3);
    assert_eq!(curve[0].object.as_deref(), Some("00:00"));
    assert_eq!(curve[0].names, strs(&["有功", "无功"]));
    assert_eq!(curve[0].fields, vec![s("52.1"), s("10.2")]);
    assert_eq!(curve[1].fields, vec![s("51.8"), None]);
    assert_eq!(curve[2].fields, vec![None, s("9.9")]);
    assert_eq!(curve[2].entity.as_deref(), Some("江苏.梅村变.1号主变"));
    // Trailing comment stripped; quoted value with a space.
    let line: Vec<&Row> = got.rows.iter().filter(|r| r.class == "Line").collect();
    assert_eq!(
        line[0].fields,
        vec![s("1"), s("辛安"), s("获佳"), s("*3"), s("0.0194")]
    );
    assert_eq!(line[1].fields[1], s("姜 家营"));
    // The FREE block is skipped, its `#`, `@`, `<` content unread.
    assert_eq!(got.skipped, 1);
    // The self-closing tag is one record of its attributes.
    let one: Vec<&Row> = got.rows.iter().filter(|r| r.class == "单对象").collect();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].names, strs(&["a", "b"]));
    assert_eq!(one[0].fields, vec![s("1"), s("x y")]);
    assert_eq!(got.rows.len(), 6);
}

#[test]
fn real_two_blocks_tab_separated() {
    let got = parse_with(
        &sample("real/LP_K8000_STAdfgYDB_20191105_113002.DT"),
        Options::default(),
    );
    assert_eq!(got.problems, vec![]);
    let classes: std::collections::BTreeSet<&str> =
        got.rows.iter().map(|r| r.class.as_str()).collect();
    assert_eq!(
        classes.into_iter().collect::<Vec<_>>(),
        vec!["Qwfh", "StandbyDbInfo"]
    );
    let r = &got.rows[0];
    assert_eq!(
        r.names,
        strs(&["设备ID", "厂站名", "量测名", "时间", "有功值"])
    );
    assert_eq!(r.fields[0], s("11681223431138934"));
    assert_eq!(
        r.fields[3],
        s("2019-11-5 11:25"),
        "a space inside a TAB field"
    );
    assert_eq!(r.fields[4], s("-1382333.435"));
    assert!(got.rows.iter().all(|r| r.fields.len() == 5));
}

#[test]
fn real_alarm_space_header_tab_rows() {
    let got = parse_with(
        &sample("real/ALARM_MESSAGE2017031316372868.RB"),
        Options::default(),
    );
    assert_eq!(got.problems, vec![]);
    assert_eq!(got.rows.len(), 1);
    let r = &got.rows[0];
    assert_eq!(r.class, "短信内容");
    assert_eq!(r.names, strs(&["顺序", "厂站名称", "发生时间", "短信内容"]));
    assert_eq!(r.fields[0], s("1"), "#1 glued to the marker");
    assert_eq!(r.fields[1], s("江西.老爷庙厂"));
    assert_eq!(
        r.fields[3],
        s("2017-03-13 16:37:28      江西.老爷庙厂 江西.老爷庙厂/35kV.318开关      分闸(备通道补)")
    );
}

#[test]
fn real_single_and_multi_column_layouts() {
    let got = parse_with(&sample("real/单列式.txt"), Options::default());
    assert_eq!(got.problems, vec![]);
    assert_eq!(got.rows.len(), 4, "a repeated name starts the next object");
    for r in &got.rows {
        assert_eq!(r.names, strs(&["单位名称", "发生时间", "次数"]));
        assert_eq!(
            r.fields,
            vec![s("花花电网"), s("2011-11-03 00:00:02.0"), s("32")]
        );
    }
    assert_eq!(got.rows[1].line, 7, "an object's line is its first row's");
    let got = parse_with(&sample("real/多列式.txt"), Options::default());
    assert_eq!(got.problems, vec![]);
    assert_eq!(got.rows.len(), 4);
    for r in &got.rows {
        assert_eq!(r.object.as_deref(), Some("花花电网"));
        assert_eq!(r.names, strs(&["单位名称", "发生时间", "次数"]));
        assert_eq!(r.fields[2], s("32"));
    }
}

#[test]
fn real_horizontal() {
    let bytes = sample("real/横表式.txt");
    let got = parse_with(&bytes, Options::default());
    assert_eq!(got.problems, vec![]);
    let rows = bytes
        .split(|&b| b == b'\n')
        .filter(|l| l.starts_with(b"#"))
        .count();
    assert_eq!(got.rows.len(), rows);
    assert_eq!(
        got.rows[0].names,
        strs(&["顺序", "单位名称", "发生时间", "次数"])
    );
    assert_eq!(got.rows[9].fields[1], s("花花电网1"));
    assert_eq!(got.blocks[0].attr("DDMM"), Some("华东电网"));
    assert_eq!(
        got.blocks[0].time().unwrap().to_string(),
        "2012-04-11 11:12:00"
    );
}

// --- §1.5 edge cases ---------------------------------------------------------------------

#[test]
fn marker_glued_or_separated() {
    let got = parse("<C>\n@\t顺序\t值\n#1\ta\n#\t2\tb\n# 3 c\n#4 d\n</C>\n");
    assert_eq!(got.problems, vec![]);
    let f: Vec<Vec<Option<String>>> = got.rows.iter().map(|r| r.fields.clone()).collect();
    assert_eq!(
        f,
        vec![
            vec![s("1"), s("a")],
            vec![s("2"), s("b")],
            vec![s("3"), s("c")],
            vec![s("4"), s("d")]
        ]
    );
    let got = parse("<C>\n@顺序 值\n#1 a\n</C>\n");
    assert_eq!(got.rows[0].names, strs(&["顺序", "值"]));
}

#[test]
fn quotes_nulls_and_empty_fields() {
    let got =
        parse("<C>\n@ a b c d e\n# '' '-' - NULL 'x  y'\n# NaN -99 \"q\" 'it's' 'open\n</C>\n");
    assert_eq!(got.problems, vec![]);
    assert_eq!(
        got.rows[0].fields,
        vec![s(""), s("-"), None, None, s("x  y")],
        "a quoted token is never NULL"
    );
    assert_eq!(
        got.rows[1].fields,
        vec![s("NaN"), s("-99"), s("q"), s("it's"), s("open")],
        "NaN and sentinels stay values; an unterminated quote runs to the end"
    );
    // TAB mode: two TABs hold an empty field (NULL); a trailing TAB one more field.
    let got = parse("<C>\n@\ta\tb\tc\n#\t1\t\t3\n#\t1\t2\t3\t\n</C>\n");
    assert_eq!(got.rows.len(), 1);
    assert_eq!(got.rows[0].fields, vec![s("1"), None, s("3")]);
    assert_eq!(got.problems.len(), 1);
    assert_eq!(got.problems[0].0, 4);
    assert!(
        got.problems[0].1.contains("4 fields, but the header has 3"),
        "{:?}",
        got.problems
    );
    // Custom null tokens.
    let got = parse_with(
        b"<C>\n@ a b\n# -99 NULL\n</C>\n",
        Options {
            null_tokens: vec!["-99".into()],
            ..Options::default()
        },
    );
    assert_eq!(got.rows[0].fields, vec![None, s("NULL")]);
}

#[test]
fn separators_can_be_forced() {
    let text = "<C>\n@ a b\n# 1\tx y\n</C>\n";
    assert_eq!(parse(text).rows[0].fields, vec![s("1"), s("x y")]);
    let got = parse_with(
        text.as_bytes(),
        Options {
            separator: Separator::Whitespace,
            ..Options::default()
        },
    );
    assert_eq!(got.rows.len(), 0);
    assert!(got.problems[0].1.contains("3 fields"));
}

#[test]
fn declarations_in_their_forms() {
    for decl in [
        "<!System=OMS Version=1.0 Code=UTF-8 Data=1.0!>",
        "<! system=oms version=1.0 code=utf-8 !>  // trailing text",
        "<!System=OMS\tVersion=1.0\tCode=UTF-8!>",
    ] {
        let text = format!("// first a comment\n{decl}\n<C>\n@ a\n# 1\n</C>\n");
        let mut p = Parser::new(Options::default());
        let mut got = Got::default();
        let mut end = 0;
        for l in text.lines() {
            end += l.len() as u64 + 1;
            p.line(l.as_bytes(), end, &mut got);
        }
        p.finish(end, &mut got);
        assert_eq!(got.problems, vec![], "{decl}");
        assert_eq!(got.rows.len(), 1, "{decl}");
        let sys = p
            .declaration
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("system"))
            .map(|(_, v)| v.to_lowercase());
        assert_eq!(sys.as_deref(), Some("oms"), "{decl}");
    }
    // No declaration at all is fine (real files have none).
    assert_eq!(parse("<C>\n@ a\n# 1\n</C>\n").rows.len(), 1);
}

#[test]
fn blocks_empty_headerless_and_misplaced() {
    // A block with no rows, and an `@` line without `#` rows: nothing, no problem.
    let got = parse("<A>\n</A>\n<B>\n@ x y\n</B>\n");
    assert_eq!((got.rows.len(), got.problems.len()), (0, 0));
    // `#` rows before any `@`: an error naming the line.
    let got = parse("<A>\n# 1 2\n@ x y\n# 3 4\n</A>\n");
    assert_eq!(got.rows.len(), 1);
    assert_eq!(got.problems.len(), 1);
    assert_eq!(got.problems[0].0, 2);
    assert!(got.problems[0].1.contains("before its @ header"));
    // A data row outside any block.
    let got = parse("# 1\n");
    assert!(got.problems[0].1.contains("outside a block"));
}

#[test]
fn closing_tags() {
    // `</Class>` closes `<Class::Entity>`; `</ Gen>` with a space.
    let got = parse("<A::e x=1>\n@ v\n# 1\n</A>\n<Gen>\n@ v\n# 2\n</ Gen>\n");
    assert_eq!(got.problems, vec![]);
    assert_eq!(got.rows.len(), 2);
    // A mismatched close closes the innermost block, with a problem.
    let got = parse("<A>\n@ v\n# 1\n</B>\n");
    assert_eq!(got.rows.len(), 1);
    assert_eq!(got.problems.len(), 1);
    assert!(got.problems[0]
        .1
        .contains("</B> closes block <A> opened at line 1"));
    // Unclosed at the end of the file: the rows are kept, the block is reported.
    let got = parse("<A>\n@@ name value\n# a 1\n# b 2\n");
    assert_eq!(got.rows.len(), 1, "the held @@ object is handed out");
    assert_eq!(got.rows[0].fields, vec![s("1"), s("2")]);
    assert!(got.problems[0]
        .1
        .contains("not closed at the end of the file"));
}

#[test]
fn tag_attributes_quoted_and_dashed_times() {
    let got = parse(
        "<DG::铁心桥 dataTime='20120423 13:30:07' Date='2022-07-21'\tTime='03-15-00' e= >\n@ v\n# 1\n</DG::铁心桥>\n",
    );
    assert_eq!(got.problems, vec![]);
    let b = &got.blocks[0];
    assert_eq!(b.attr("datatime"), Some("20120423 13:30:07"));
    assert_eq!(b.attr("e"), Some(""));
    assert_eq!(b.time().unwrap().to_string(), "2022-07-21 03:15:00");
}

#[test]
fn single_column_with_two_header_fields() {
    let got = parse("<S>\n@@ 属性名 属性值\n# a 1\n# b 2\n# a 3\n# b 4\n</S>\n");
    assert_eq!(got.problems, vec![]);
    assert_eq!(got.rows.len(), 2);
    assert_eq!(got.rows[1].fields, vec![s("3"), s("4")]);
    assert_eq!(got.rows[1].line, 5);
}

#[test]
fn single_column_objects_wider_than_the_header() {
    // Objects of 5 attributes under a 3-field header; a short row is a problem, not a
    // panic.
    let got = parse("<S>\n@@ 顺序 属性名 属性值\n# 1 a 1\n# 2 b 2\n# 3 c 3\n# 4 d 4\n# 5 e 5\n# 1 a 6\n# 2 b 7\n# 3 c 8\n# 4 d 9\n# 5 e 10\n# x\n</S>\n");
    assert_eq!(got.rows.len(), 2);
    assert_eq!(got.rows[1].names, strs(&["a", "b", "c", "d", "e"]));
    assert_eq!(got.rows[1].fields[4], s("10"));
    assert_eq!(got.problems.len(), 1);
    assert!(got.problems[0].1.contains("1 fields, but the header has 3"));
    let got = parse("<S>\n@@ name value\n# a 1\n# a 2\n# x\n</S>\n");
    assert_eq!(got.rows.len(), 2);
    assert_eq!(got.problems.len(), 1);
}

#[test]
fn quotes_in_tab_mode_end_at_the_tab() {
    let got = parse("<C>\n@\ta\tb\tc\n#\t'abc' \tx\t'y\n</C>\n");
    assert_eq!(got.problems, vec![]);
    assert_eq!(got.rows[0].fields, vec![s("abc"), s("x"), s("y")]);
    // A comment after a quoted TAB field.
    let got = parse("<C>\n@\ta\tb\n#\t1\t'x y' // note\n</C>\n");
    assert_eq!(got.problems, vec![]);
    assert_eq!(got.rows[0].fields, vec![s("1"), s("x y")]);
}

#[test]
fn comments_and_unread_blocks_are_not_decoded() {
    // A GBK comment before the declaration, and GBK bytes inside a block not read.
    let (c, _, _) = encoding_rs::GBK.encode("// 遥测\n");
    let mut bytes = c.to_vec();
    bytes.extend_from_slice(b"<!Code=GBK!>\n<A>\n@ v\n# 1\n</A>\n");
    let got = parse_with(&bytes, Options::default());
    assert_eq!(got.problems, vec![]);
    let (body, _, _) = encoding_rs::GBK.encode("<B>\n@ 名\n# 梅村\n</B>\n<A>\n@ v\n# 2\n</A>\n");
    let got = parse_with(
        &body,
        Options {
            block: "A".into(),
            ..Options::default()
        },
    );
    assert_eq!(got.problems, vec![]);
    assert_eq!(got.rows.len(), 1);
}

#[test]
fn a_nested_block_does_not_leave_its_names_behind() {
    let got = parse("<P>\n@ id name\n# 1 x\n<G>\n@ name id\n# y 2\n</G>\n# 3 z\n</P>\n");
    // A sink caching how names bind (by schema) must bind the outer rows again.
    assert_ne!(got.schemas[2], got.schemas[1]);
    assert_eq!(got.rows[2].names, strs(&["id", "name"]));
    assert_eq!(got.rows[2].fields, vec![s("3"), s("z")]);
}

#[test]
fn wrapped_markers() {
    let got = parse("<C>\n<@> a b </@>\n<#> 1 2 </#>\n<#>\t3\t4</#>\n</C>\n");
    assert_eq!(got.problems, vec![]);
    assert_eq!(got.rows[0].names, strs(&["a", "b"]));
    assert_eq!(got.rows[0].fields, vec![s("1"), s("2")]);
    assert_eq!(got.rows[1].fields, vec![s("3"), s("4")]);
}

#[test]
fn trailing_comments_versus_slashes_in_quotes() {
    let got = parse("<C>\n@ a b\n# 'http://x' y // c\n# 1 'a // b'\n</C>\n");
    assert_eq!(got.problems, vec![]);
    assert_eq!(got.rows[0].fields, vec![s("http://x"), s("y")]);
    assert_eq!(got.rows[1].fields, vec![s("1"), s("a // b")]);
    let got = parse("<C>\n@\ta\tb\n#\t1\t2\t// c\n#\t1\t2 // c\n</C>\n");
    assert_eq!(got.problems, vec![]);
    assert_eq!(got.rows[0].fields, vec![s("1"), s("2")]);
    assert_eq!(got.rows[1].fields, vec![s("1"), s("2")]);
    // Turned off, `//` is data.
    let got = parse_with(
        b"<C>\n@ a b\n# 1 //x\n</C>\n",
        Options {
            trailing_comments: false,
            ..Options::default()
        },
    );
    assert_eq!(got.rows[0].fields, vec![s("1"), s("//x")]);
}

#[test]
fn crlf_bom_and_encodings() {
    let got = parse("\u{feff}<C>\r\n@ a b\r\n# 1 x\r\n</C>\r\n");
    assert_eq!(got.problems, vec![]);
    assert_eq!(got.rows[0].fields, vec![s("1"), s("x")]);
    // GBK declared by the file.
    let (body, _, _) = encoding_rs::GBK.encode("<遥测>\n@ 名称 值\n# 梅村变 1\n</遥测>\n");
    let mut gbk = b"<!System=OMS Code=GBK!>\n".to_vec();
    gbk.extend_from_slice(&body);
    let got = parse_with(&gbk, Options::default());
    assert_eq!(got.problems, vec![]);
    assert_eq!(got.rows[0].class, "遥测");
    assert_eq!(got.rows[0].fields, vec![s("梅村变"), s("1")]);
    // GBK without a declaration: invalid UTF-8 is a problem naming the line...
    let got = parse_with(&body, Options::default());
    assert_eq!(got.rows.len(), 0);
    assert!(got
        .problems
        .iter()
        .any(|(l, r)| *l == 1 && r.contains("invalid UTF-8")));
    // ...unless a fallback encoding is configured.
    let got = parse_with(
        &body,
        Options {
            fallback: Some(Encoding::Gbk),
            ..Options::default()
        },
    );
    assert_eq!(got.problems, vec![]);
    assert_eq!(got.rows[0].fields, vec![s("梅村变"), s("1")]);
    // One bad line does not stop the good ones.
    let got = parse_with(
        b"<C>\n@ a\n# ok\n# \xff\xfe\n# fine\n</C>\n",
        Options::default(),
    );
    assert_eq!(got.rows.len(), 2);
    assert_eq!(got.problems[0].0, 4);
}

#[test]
fn free_blocks_hold_anything() {
    let got = parse("<数据块::=FREE SIZE=5>\n# @ < </x>\n@@\n</数据块::=FREE>\n<C>\n@ a\n# 1\n</C>\n<Bridge:=Free Size=3>\nabc\n</Bridge:=Free>\n");
    assert_eq!(got.problems, vec![]);
    assert_eq!(got.skipped, 2);
    assert_eq!(got.rows.len(), 1);
}

#[test]
fn nested_blocks_read_as_their_own_class() {
    let got = parse("<Plant>\n@ id\n# 1\n  <Gen>\n  @ g\n  # 7\n  </Gen>\n# 2\n</Plant>\n");
    assert_eq!(got.problems, vec![]);
    let by: Vec<(String, Option<String>)> = got
        .rows
        .iter()
        .map(|r| (r.class.clone(), r.fields[0].clone()))
        .collect();
    assert_eq!(
        by,
        vec![
            ("Plant".into(), s("1")),
            ("Gen".into(), s("7")),
            ("Plant".into(), s("2"))
        ]
    );
}

#[test]
fn class_patterns() {
    let text = "<YC::a>\n@ v\n# 1\n</YC::a>\n<YC::b>\n@ v\n# 2\n</YC::b>\n<YX>\n@ v\n# 3\n</YX>\n";
    let only = |block: &str| {
        parse_with(
            text.as_bytes(),
            Options {
                block: block.into(),
                ..Options::default()
            },
        )
        .rows
        .iter()
        .map(|r| r.fields[0].clone().unwrap())
        .collect::<Vec<_>>()
    };
    assert_eq!(only("Y*"), vec!["1", "2", "3"]);
    assert_eq!(only("YC"), vec!["1", "2"]);
    assert_eq!(only("YC::b"), vec!["2"]);
    assert_eq!(only("Z"), Vec::<String>::new());
}

#[test]
fn record_ends_are_the_offsets_that_complete_them() {
    // Resuming from a committed offset X drops exactly what was handed out by X.
    let text = "<M>\n@# 属性名 o1 o2\n# a 1 2\n# b 3 4\n</M>\n<H>\n@ v\n# 5\n# 6\n</H>\n";
    let got = parse(text);
    let close_m = text.find("<H>").unwrap() as u64;
    assert_eq!(
        got.ends[..2],
        [close_m, close_m],
        "@# records complete at </M>"
    );
    assert_eq!(got.ends[2], text.find("# 6").unwrap() as u64);
    assert!(got.ends.windows(2).all(|w| w[0] <= w[1]));
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    /// Lines built from the pieces E files are made of, so the fuzzer reaches deep
    /// states (blocks, layouts, quotes) rather than only "not a marker".
    fn piece() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "<", ">", "</", "/>", "<!", "!>", "@", "@@", "@#", "@/", "/@", "#", "%", "$", ":", "*",
            "//", "'", "\"", "\t", " ", "  ", "::", ":=FREE", "=", "a", "YC", "值", "-", "NULL",
            "1", "2.5", "\r", "<#>", "</#>", "<@>", "\u{feff}", "\u{ff}",
        ])
    }

    fn line() -> impl Strategy<Value = String> {
        prop::collection::vec(piece(), 0..12).prop_map(|v| v.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, .. ProptestConfig::default() })]

        #[test]
        fn structured_input_never_panics(lines in prop::collection::vec(line(), 0..40)) {
            let text = lines.join("\n");
            let got = parse(&text);
            // Every horizontal record has as many fields as its header has names.
            for r in &got.rows {
                if r.object.is_none() && !r.names.is_empty() {
                    prop_assert_eq!(r.names.len(), r.fields.len());
                }
            }
            prop_assert!(got.ends.windows(2).all(|w| w[0] <= w[1]));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2000)) {
            for sep in [Separator::Auto, Separator::Tab, Separator::Whitespace] {
                parse_with(&bytes, Options { separator: sep, ..Options::default() });
                parse_with(&bytes, Options { encoding: Some(Encoding::Gbk), ..Options::default() });
            }
        }
    }
}
