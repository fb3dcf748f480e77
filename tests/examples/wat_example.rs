//! The WAT module in `guest-sdk/ABI.md` ("Example: a module in WAT") compiles and
//! behaves as the page says, so the example a non-Rust author copies stays true.

use super::host::{Failure, Host};

const ABI_MD: &str = include_str!("../../guest-sdk/ABI.md");

fn example_wat() -> &'static str {
    let section = ABI_MD
        .split("## Example: a module in WAT")
        .nth(1)
        .expect("ABI.md has the WAT example section");
    let start = section.find("```wat\n").expect("a wat code block") + "```wat\n".len();
    let length = section[start..]
        .find("```")
        .expect("the end of the code block");
    &section[start..start + length]
}

#[test]
fn the_abi_wat_example_runs() {
    let wasm = wat::parse_str(example_wat()).expect("the example parses");
    let mut module = Host::new(&wasm);
    assert_eq!(module.query("").as_deref(), Ok(""));
    assert_eq!(module.apply("hello").as_deref(), Ok(""));
    assert_eq!(module.apply("world").as_deref(), Ok("hello"));
    assert_eq!(module.query("").as_deref(), Ok("world"));
    assert_eq!(
        module.apply(""),
        Err(Failure::Guest("empty command".into()))
    );
    assert_eq!(module.query("").as_deref(), Ok("world"));
    // A value larger than the initial page makes the allocator grow memory.
    let large = "x".repeat(200_000);
    module.apply(&large).unwrap();
    assert_eq!(module.apply("small").as_deref(), Ok(large.as_str()));
}
