#!/usr/bin/env python3
"""Generate the binary loader fixtures under crates/rag/tests/fixtures/ingest.

Text fixtures (.txt, .md, .html, .csv, .jsonl and the small broken ones) are
written by hand and committed as they are; this script makes the files that
need a real writer: PDFs (fpdf2), a DOCX (python-docx), and broken variants of
them. Run it again only to change those fixtures:

    pip install fpdf2 python-docx
    python3 scripts/make-ingest-fixtures.py
"""
from pathlib import Path

from docx import Document
from fpdf import FPDF

ROOT = Path(__file__).resolve().parent.parent / "crates/rag/tests/fixtures/ingest"
GOOD = ROOT / "good"
BROKEN = ROOT / "broken"

PDF_PAGES = [
    (
        "Lighthouse keeping, page one",
        "The Eddystone lighthouse stands on a wave-washed reef fourteen miles "
        "south of Plymouth. Its first tower was built of wood by Henry "
        "Winstanley and was finished in 1698. The great storm of 1703 swept it "
        "away together with its builder.",
    ),
    (
        "Lighthouse keeping, page two",
        "John Smeaton's granite tower of 1759 used dovetailed stone blocks and "
        "hydraulic lime that set under water. It served until 1877, when "
        "erosion of the rock beneath it forced the building of the present "
        "tower by James Douglass.",
    ),
    (
        "Lighthouse keeping, page three",
        "Keepers worked in watches of four hours, trimming wicks and winding "
        "the clockwork that turned the lens. The light was automated in 1982 "
        "and the last keepers left the rock that year.",
    ),
]


def make_pdf(path: Path, encrypt: bool = False) -> bytes:
    pdf = FPDF()
    pdf.set_title("Eddystone Lighthouse")
    pdf.set_author("ragfleet fixtures")
    if encrypt:
        # A user password: nobody can read the text without it.
        pdf.set_encryption(owner_password="owner-secret", user_password="user-secret")
    for heading, body in PDF_PAGES:
        pdf.add_page()
        pdf.set_font("Helvetica", style="B", size=16)
        pdf.cell(0, 10, heading, new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("Helvetica", size=12)
        pdf.multi_cell(0, 7, body)
    data = bytes(pdf.output())
    path.write_bytes(data)
    return data


def make_docx(path: Path) -> None:
    doc = Document()
    doc.core_properties.title = "Field Notes on Bees"
    doc.add_heading("Field Notes on Bees", level=1)
    doc.add_paragraph(
        "Honey bees communicate the direction of food with the waggle dance. "
        "The angle of the run against vertical gives the angle to the sun."
    )
    p = doc.add_paragraph("A colony in summer holds ")
    p.add_run("forty thousand").bold = True
    p.add_run(" workers and a single queen.")
    doc.add_heading("Swarming", level=2)
    doc.add_paragraph(
        "In late spring the old queen leaves with about half of the workers; "
        "scouts choose the new nest site by a quorum of dances."
    )
    table = doc.add_table(rows=2, cols=2)
    table.cell(0, 0).text = "Caste"
    table.cell(0, 1).text = "Lifespan"
    table.cell(1, 0).text = "Worker"
    table.cell(1, 1).text = "Six weeks in summer"
    doc.save(str(path))


def main() -> None:
    GOOD.mkdir(parents=True, exist_ok=True)
    BROKEN.mkdir(parents=True, exist_ok=True)
    pdf = make_pdf(GOOD / "lighthouse.pdf")
    make_docx(GOOD / "bees.docx")
    # Broken variants.
    (BROKEN / "truncated.pdf").write_bytes(pdf[: len(pdf) // 3])
    make_pdf(BROKEN / "encrypted.pdf", encrypt=True)
    (BROKEN / "not-a-zip.docx").write_bytes(
        b"This is a plain text file that was given a .docx name by mistake.\n"
    )


if __name__ == "__main__":
    main()
