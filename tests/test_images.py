"""Image inputs: normalisation edge cases, every source kind, and downloads over loopback HTTP."""

from __future__ import annotations

import asyncio
import base64
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from aiohttp import web
from PIL import Image

from synthgen.generators.images.checks import (
    is_refusal,
    length_ratio,
    mentions_caption,
    strip_translation_label,
)
from synthgen.generators.images.download import DownloadFailed, DownloadLimits, open_downloader
from synthgen.generators.images.normalize import ImageRejected, Limits, normalize
from synthgen.generators.images.samples import draw, encode, write_folder
from synthgen.generators.images.sources import ImageInputParams, iter_items, load_image
from synthgen.loopback_server import loopback_site


def _open(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


# -- normalisation ------------------------------------------------------------------------------
def test_shapes_png_becomes_rgb_jpeg_keyed_by_content():
    data = encode(draw(3))
    a, b = normalize(data), normalize(data)
    assert a.sha256 == b.sha256 and a.mime == "image/jpeg" and (a.width, a.height) == (160, 120)
    img = _open(a.data)
    assert img.format == "JPEG" and img.mode == "RGB" and img.size == (160, 120)
    assert normalize(encode(draw(4))).sha256 != a.sha256
    # our own output passes through untouched: same bytes, same hash, no second JPEG generation
    assert normalize(a.data).data == a.data
    png = normalize(data, Limits(format="png"))
    assert _open(png.data).format == "PNG" and png.mime == "image/png"


def test_exif_rotated_photo_is_stored_upright():
    # a landscape sensor image tagged "rotate 90 CW to view": red band on top of the stored pixels
    img = Image.new("RGB", (120, 60), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 120, 15))
    exif = Image.Exif()
    exif[0x0112] = 6
    out = normalize(encode(img, "JPEG", exif=exif.tobytes(), quality=95))
    upright = _open(out.data)
    assert upright.size == (60, 120) and (out.width, out.height) == (60, 120)
    r, _g, b = upright.getpixel((55, 60))  # the top band is now the right edge
    assert r > 200 and b < 60
    assert "exif" not in upright.info  # re-encoding drops the metadata (and any GPS in it)


def test_cmyk_jpeg_becomes_rgb_with_the_right_colour():
    img = Image.new("CMYK", (80, 60), (0, 255, 255, 0))  # pure red in CMYK
    out = _open(normalize(encode(img, "JPEG", quality=95)).data)
    assert out.mode == "RGB"
    r, g, b = out.getpixel((40, 30))
    assert r > 220 and g < 40 and b < 40


def test_alpha_palette_and_16_bit_inputs():
    rgba = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    rgba.paste((0, 128, 0, 255), (0, 0, 32, 64))
    out = _open(normalize(encode(rgba)).data)
    assert out.getpixel((50, 10))[0] > 240  # transparent -> white, not black
    assert out.getpixel((10, 10))[1] > 100
    pal = Image.new("P", (64, 64), 0)
    pal.info["transparency"] = 0
    assert _open(normalize(encode(pal)).data).getpixel((5, 5)) == (255, 255, 255)
    deep = Image.new("I;16", (64, 64), 65535)
    assert _open(normalize(encode(deep)).data).getpixel((5, 5))[0] > 240


def test_large_image_is_capped_to_max_side():
    wide = Image.new("L", (20000, 1200), 128)
    out = normalize(encode(wide), Limits(max_side=1024))
    assert (out.width, out.height) == (1024, 61) and out.original_size == (20000, 1200)
    assert _open(out.data).size == (1024, 61)


def test_huge_image_is_refused_before_decoding():
    huge = encode(Image.new("1", (20000, 9000)))  # 180 megapixels, a few kB as PNG
    with pytest.raises(ImageRejected) as err:
        normalize(huge)
    assert err.value.reason == "image_too_large"  # PIL's decompression-bomb guard, turned into a reason
    with pytest.raises(ImageRejected) as err:
        normalize(encode(Image.new("L", (20000, 100))), Limits(max_pixels=1_000_000, max_aspect=500))
    assert err.value.reason == "image_too_large" and "20000x100 px" in err.value.detail


@pytest.mark.parametrize(("data", "reason"), [
    (b"", "empty_image"),
    (b"<html>not an image</html>", "not_an_image"),
    (encode(draw(1))[:400], "corrupt_image"),
    (encode(Image.new("RGB", (12, 12))), "image_too_small"),
    (encode(Image.new("RGB", (2000, 40))), "image_aspect_ratio"),
])
def test_bad_inputs_are_rejected_with_a_reason(data, reason):
    with pytest.raises(ImageRejected) as err:
        normalize(data)
    assert err.value.reason == reason


def test_byte_cap():
    with pytest.raises(ImageRejected, match="image_too_large"):
        normalize(encode(draw(1)), Limits(max_bytes=1000))


# -- sources ------------------------------------------------------------------------------------
def test_folder_is_walked_in_sorted_order_lazily(tmp_path):
    write_folder(tmp_path / "b", 2)
    write_folder(tmp_path / "a", 2, start=5)
    (tmp_path / "a" / "notes.txt").write_text("skip me")
    (tmp_path / ".hidden").mkdir()
    write_folder(tmp_path / ".hidden", 1)
    p = ImageInputParams(source=str(tmp_path))
    items = list(iter_items(p))
    assert items == [{"file": "a/img-00005.png"}, {"file": "a/img-00006.png"},
                     {"file": "b/img-00000.png"}, {"file": "b/img-00001.png"}]
    assert list(iter_items(p.model_copy(update={"limit": 3}))) == items[:3]
    img = asyncio.run(load_image(items[0], p, None))
    assert img.width == 160


def test_parquet_with_bytes_structs_and_paths(tmp_path):
    write_folder(tmp_path / "imgs", 1)
    raw = encode(draw(9))
    table = pa.table({
        "image": [{"bytes": raw, "path": None}, {"bytes": None, "path": "imgs/img-00000.png"}, None],
        "caption": ["a", "b", "c"],
    })
    pq.write_table(table, tmp_path / "t.parquet")
    p = ImageInputParams(source=str(tmp_path / "t.parquet"))
    items = list(iter_items(p, {"caption": "caption"}))
    assert items[0] == {"row": 0, "image": raw, "caption": "a"}
    assert items[1] == {"row": 1, "path": str(tmp_path / "imgs" / "img-00000.png"), "caption": "b"}
    assert items[2] == {"row": 2, "missing": True, "caption": "c"}
    assert asyncio.run(load_image(items[1], p, None)).width == 160
    with pytest.raises(ImageRejected, match="missing_image"):
        asyncio.run(load_image(items[2], p, None))
    with pytest.raises(ValueError, match="no column"):
        list(iter_items(p, {"caption": "nope"}))


def test_jsonl_with_paths_data_urls_and_urls(tmp_path):
    write_folder(tmp_path, 1)
    data_url = "data:image/png;base64," + base64.b64encode(encode(draw(2))).decode()
    lines = [{"image": "img-00000.png", "meta": {"cap": "x"}}, {"image": data_url},
             {"image": "https://example.invalid/a.jpg"}, {"image": "missing.png"}]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    p = ImageInputParams(source=str(tmp_path / "d.jsonl"))
    items = list(iter_items(p, {"caption": "meta.cap"}))
    assert items[0]["path"] == str(tmp_path / "img-00000.png") and items[0]["caption"] == "x"
    assert items[1]["image"] == encode(draw(2)) and items[1]["caption"] is None
    assert items[2]["url"] == "https://example.invalid/a.jpg"
    with pytest.raises(ImageRejected, match="image_file_missing"):
        asyncio.run(load_image(items[3], p, None))


def test_saved_and_hub_style_datasets_stream_encoded_images(tmp_path):
    import datasets

    feats = datasets.Features({"image": datasets.Image(), "text": datasets.Value("string")})
    ds = datasets.Dataset.from_dict({"image": [draw(i) for i in range(3)], "text": ["a", "b", "c"]}, features=feats)
    ds.save_to_disk(str(tmp_path / "saved"))
    items = list(iter_items(ImageInputParams(source=str(tmp_path / "saved")), {"caption": "text"}))
    assert [i["caption"] for i in items] == ["a", "b", "c"]
    assert all(isinstance(i["image"], bytes) for i in items)  # encoded, never decoded PIL objects
    # `hf:` goes through datasets.load_dataset(streaming=True); a local parquet folder stands in for the Hub
    (tmp_path / "hub" / "data").mkdir(parents=True)
    ds.to_parquet(str(tmp_path / "hub" / "data" / "train-00000.parquet"))
    p = ImageInputParams(source=f"hf:{tmp_path / 'hub'}")
    hub_items = list(iter_items(p, {"caption": "text"}))
    assert [i["image"] for i in hub_items] == [i["image"] for i in items]
    assert asyncio.run(load_image(hub_items[0], p, None)).width == 160


def test_source_validation_errors(tmp_path):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="not found"):
        ImageInputParams(source=str(tmp_path / "nope"))
    (tmp_path / "x.csv").write_text("a")
    with pytest.raises(ValidationError, match="unsupported"):
        ImageInputParams(source=str(tmp_path / "x.csv"))
    with pytest.raises(ValidationError, match="extra"):
        ImageInputParams(source=str(tmp_path), bogus=1)


# -- downloads ----------------------------------------------------------------------------------
@pytest.fixture
def image_host():
    """A loopback HTTP server: good images, 404s, flaky 500s, an oversized body and a slow one."""
    hits: dict[str, int] = {}
    picture = encode(draw(5))

    async def handle(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        hits[name] = hits.get(name, 0) + 1
        if name == "ok.png":
            return web.Response(body=picture, content_type="image/png")
        if name == "flaky.png" and hits[name] < 3:
            return web.Response(status=503)
        if name == "flaky.png":
            return web.Response(body=picture, content_type="image/png")
        if name == "big.bin":
            resp = web.StreamResponse()  # chunked: no Content-Length to trust
            await resp.prepare(request)
            for _ in range(40):
                await resp.write(b"\0" * 65536)
            return resp
        if name == "slow.png":
            await asyncio.sleep(2)
            return web.Response(body=picture)
        return web.Response(status=404)

    async def serve(test):
        async with loopback_site(handle) as base:
            return await test(base)

    return serve, hits


def test_downloads_retry_cap_and_time_out(image_host):
    serve, hits = image_host
    limits = DownloadLimits(timeout=0.3, max_bytes=1_000_000, attempts=3, concurrency=4)

    async def test(base: str):
        outcomes = {}
        async with open_downloader(limits) as dl:
            for name in ("ok.png", "flaky.png", "missing.png", "big.bin", "slow.png"):
                try:
                    outcomes[name] = len(await dl.fetch(f"{base}/{name}"))
                except DownloadFailed as exc:
                    outcomes[name] = exc.reason
            try:
                await dl.fetch("ftp://127.0.0.1/x")
            except DownloadFailed as exc:
                outcomes["ftp"] = exc.reason
        return outcomes

    out = asyncio.run(serve(test))
    assert out["ok.png"] > 100 and out["flaky.png"] > 100
    assert out["missing.png"] == "download_http_404" and hits["missing.png"] == 1  # 404 is not retried
    assert hits["flaky.png"] == 3
    assert out["big.bin"] == "download_too_large"
    assert out["slow.png"] == "download_timeout" and hits["slow.png"] == 3
    assert out["ftp"] == "download_bad_url"


def test_url_items_are_downloaded_and_normalised(image_host, tmp_path):
    serve, _ = image_host
    p = ImageInputParams(source=str(tmp_path))

    async def test(base: str):
        async with open_downloader() as dl:
            img = await load_image({"row": 0, "url": f"{base}/ok.png"}, p, dl)
            with pytest.raises(DownloadFailed, match="download_http_404"):
                await load_image({"row": 1, "url": f"{base}/gone.png"}, p, dl)
            return img

    assert asyncio.run(serve(test)).width == 160


# -- text checks --------------------------------------------------------------------------------
def test_refusal_caption_mention_and_ratio_checks():
    for text in ("I cannot see the image.", "I'm sorry, but I can't help with that.",
                 "申し訳ありませんが、画像を確認することができません。", "画像が表示されていません。"):
        assert is_refusal(text), text
    for text in ("A dog runs on the beach.", "犬が砂浜を走っています。", "看板の文字は確認できない。"):
        assert not is_refusal(text), text
    assert mentions_caption("キャプションによると、犬は三匹です。")
    assert mentions_caption("According to the description, there are three dogs.")
    assert not mentions_caption("画像を見ると、犬は三匹います。")
    assert strip_translation_label("翻訳:「犬が走っている。」") == "犬が走っている。"
    assert 0.3 < length_ratio("A red circle on white.", "白地に赤い丸。") < 0.5


def test_decoded_pil_rows_are_encoded_once():
    from synthgen.generators.images.sources import _image_ref

    ref = _image_ref(draw(1), None, is_url=False)
    assert normalize(ref["image"]).width == 160
