#!/usr/bin/env python3
"""Regenerates fractions/media/pizza.png and fractions/fiche.pdf (Python 3 stdlib only).

Both outputs are deterministic: same script, same bytes.
"""
import math
import os
import struct
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "fractions")


# ---------------------------------------------------------------- PNG ----
def write_png(path, width, height, pixel):
    """pixel(x, y) -> (r, g, b); writes an 8-bit RGB PNG."""
    raw = bytearray()
    for y in range(height):
        raw.append(0)  # filter type: none
        for x in range(width):
            raw.extend(pixel(x, y))

    def chunk(tag, data):
        c = tag + data
        return struct.pack(">I", len(data)) + c + struct.pack(">I", zlib.crc32(c) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n"
    png += chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(bytes(raw), 9))
    png += chunk(b"IEND", b"")
    with open(path, "wb") as f:
        f.write(png)


def pizza_pixel_factory(size, parts, eaten):
    """A pizza cut into `parts` equal slices; the first `eaten` slices are missing."""
    cx = cy = size / 2
    r_crust = size * 0.46
    r_sauce = size * 0.40
    bg = (255, 253, 247)  # same as the page paper (--papier in style.css)
    crust = (214, 160, 82)
    cheese = (250, 210, 90)
    plate = (235, 235, 228)
    cut = (120, 70, 30)
    pepperoni = (190, 45, 35)
    # pepperoni centres: one per slice, in the middle of the slice
    peps = []
    for i in range(parts):
        a = (i + 0.5) * 2 * math.pi / parts
        peps.append((cx + math.cos(a) * r_sauce * 0.6, cy - math.sin(a) * r_sauce * 0.6))
    r_pep = size * 0.055
    half_cut = max(1.0, size / 160)

    def pixel(x, y):
        px, py = x + 0.5, y + 0.5
        dx, dy = px - cx, cy - py
        d = math.hypot(dx, dy)
        if d > r_crust:
            return plate if d < size * 0.49 else bg
        ang = math.atan2(dy, dx) % (2 * math.pi)
        slice_idx = int(ang / (2 * math.pi / parts))
        if slice_idx < eaten:
            return plate
        # cut lines: distance to the nearest slice boundary ray
        for k in range(parts):
            a = k * 2 * math.pi / parts
            along = dx * math.cos(a) + dy * math.sin(a)
            across = abs(-dx * math.sin(a) + dy * math.cos(a))
            if along > 0 and across < half_cut:
                return cut
        if d > r_sauce:
            return crust
        for (qx, qy) in peps:
            if math.hypot(px - qx, py - qy) < r_pep:
                return pepperoni
        return cheese

    return pixel


# ---------------------------------------------------------------- PDF ----
def pdf_escape(s):
    return s.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def write_pdf(path, lines):
    """One A4 page, Helvetica (WinAnsiEncoding so French accents work)."""
    content = ["BT", "/F1 22 Tf", "60 770 Td", "28 TL"]
    first = True
    for size, text in lines:
        if not first:
            content.append("T*")
        first = False
        content.append("/F1 %d Tf" % size)
        content.append("(%s) Tj" % pdf_escape(text))
    content.append("ET")
    # a drawn rectangle split into 4, with 3 parts shaded: 3/4
    content.append("0.98 0.82 0.35 rg")
    content.append("60 300 90 60 re 150 300 90 60 re 240 300 90 60 re f")
    content.append("0 0 0 RG 1.5 w")
    content.append("60 300 360 60 re S 150 300 m 150 360 l S 240 300 m 240 360 l S 330 300 m 330 360 l S")
    stream = "\n".join(content).encode("cp1252")

    objs = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] "
        b"/Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Title (Fiche - Les fractions) /Producer (make-assets.py) >>",
    ]
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for i, body in enumerate(objs, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n" % (len(objs) + 1)
    out += b"0000000000 65535 f \n"
    for off in offsets:
        out += b"%010d 00000 n \n" % off
    out += b"trailer\n<< /Size %d /Root 1 0 R /Info %d 0 R >>\n" % (len(objs) + 1, len(objs))
    out += b"startxref\n%d\n%%%%EOF\n" % xref
    with open(path, "wb") as f:
        f.write(out)


def main():
    os.makedirs(os.path.join(OUT, "media"), exist_ok=True)
    write_png(os.path.join(OUT, "media", "pizza.png"), 240, 240, pizza_pixel_factory(240, 8, 3))
    write_pdf(
        os.path.join(OUT, "fiche.pdf"),
        [
            (24, "Fiche d'exercices : les fractions"),
            (12, "Nom : ______________________   Classe : ________   Date : ________"),
            (14, ""),
            (14, "1. Une pizza est coupée en 8 parts égales. On en mange 3."),
            (14, "    Quelle fraction de la pizza a-t-on mangée ? ........"),
            (14, "    Quelle fraction reste-t-il ? ........"),
            (14, "2. Complète : 1/2 = .../4 = .../8"),
            (14, "3. Range du plus petit au plus grand : 3/4 ; 1/4 ; 2/4"),
            (14, "4. Quelle fraction du rectangle ci-dessous est coloriée ?"),
        ],
    )


if __name__ == "__main__":
    main()
