use super::*;

#[test]
fn loaded_image_table() {
    let cases: &[(&str, Result<&str, &str>)] = &[
        (r#"{"stream":"Loaded image: demo:a\n"}"#, Ok("demo:a")),
        (
            r#"{"stream":"Loaded image ID: sha256:abc\n"}"#,
            Ok("sha256:abc"),
        ),
        (
            r#"{"stream":"Loaded image ID: sha256:abc\n"}{"stream":"Loaded image: demo:b\n"}"#,
            Ok("demo:b"),
        ),
        (
            r#"{"error":"invalid tar header"}"#,
            Err("invalid tar header"),
        ),
        ("", Err("loaded no image")),
        ("not json", Err("unreadable")),
    ];
    for (answer, want) in cases {
        let got = loaded_image(answer.as_bytes());
        match (want, &got) {
            (Ok(w), Ok(g)) => assert_eq!(w, g, "{answer}"),
            (Err(w), Err(g)) => assert!(g.contains(w), "{answer}: {g}"),
            _ => panic!("{answer}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn encode_escapes_json() {
    assert_eq!(
        encode(r#"{"label":["a=b"]}"#),
        "%7B%22label%22%3A%5B%22a%3Db%22%5D%7D"
    );
}
