//! A real browser: headless Chromium opens the sample lesson from a running node
//! over HTTPS, and the page reports in its own DOM what loaded.

use std::time::Duration;

use cartable_tests::{Node, browser, sample_lesson};

#[test]
fn chromium_shows_the_sample_lesson_with_its_image_and_video() -> anyhow::Result<()> {
    let node = Node::start()?;
    let id = node.add(&sample_lesson())?;
    let dom = browser::dump_dom(&format!("{}/b/{id}/", node.url), Duration::from_secs(10))?;
    assert!(dom.contains("Les fractions"), "the page rendered: {dom}");
    assert!(dom.contains("image: loaded"), "{dom}");
    assert!(dom.contains("video: loaded"), "{dom}");
    assert!(
        dom.contains("<p id=\"protocol\">h2</p>"),
        "Chromium negotiated HTTP/2: {dom}"
    );
    Ok(())
}

#[test]
fn chromium_seeks_near_the_end_of_the_video() -> anyhow::Result<()> {
    let node = Node::start()?;
    let id = node.add(&sample_lesson())?;
    let url = format!("{}/b/{id}/#seek-test", node.url);
    let dom = browser::dump_dom(&url, Duration::from_secs(10))?;
    assert!(dom.contains("video: loaded"), "{dom}");
    assert!(
        dom.contains("seek: done at 7s"),
        "the 8 s video seeked to its last second: {dom}"
    );
    Ok(())
}

#[test]
fn chromium_sees_a_listing_for_a_bundle_without_index() -> anyhow::Result<()> {
    let node = Node::start()?;
    let lesson = tempfile::tempdir()?;
    std::fs::write(lesson.path().join("fiche.pdf"), b"%PDF-1.4\n")?;
    std::fs::write(lesson.path().join("notes.txt"), b"notes")?;
    let id = node.add(lesson.path())?;
    let dom = browser::dump_dom(&format!("{}/b/{id}/", node.url), Duration::from_secs(3))?;
    assert!(
        dom.contains("href=\"fiche.pdf\"") && dom.contains("href=\"notes.txt\""),
        "{dom}"
    );
    Ok(())
}
