"""The transformers engine running a LLaVA-style VLM: a tiny random one built and saved here."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from synthgen.engine.errors import RequestError
from synthgen.engine.messages import image_part, user
from synthgen.engine.roles import build_roles, close_roles, resolve_roles
from synthgen.engine.transformers_engine import TransformersClient
from synthgen.engine.transformers_vlm import TransformersVLMClient, is_vision_checkpoint
from synthgen.generators.images.samples import draw
from synthgen.spec import RoleConfig

# A LLaVA-1.5-like template: image parts become the <image> placeholder the processor expands.
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] | upper }}: {% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for p in m['content'] %}{% if p['type'] == 'image' %}<image>\n{% else %}{{ p['text'] }}"
    "{% endif %}{% endfor %}{% endif %}</s>{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


@pytest.fixture(scope="module")
def tiny_llava_dir(tmp_path_factory):
    """Tiny CLIP vision tower + tiny Llama + a BPE tokenizer with an <image> token, randomly initialised."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    path = tmp_path_factory.mktemp("tiny-llava")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = ["こんにちは、世界。", "a red circle and a blue square", "hello world", "USER: ASSISTANT:"] * 20
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<pad>", "</s>", "<s>", "<image>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", bos_token="<s>")
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    LlavaProcessor(image_processor=image_processor, tokenizer=fast, patch_size=8, image_token="<image>",
                   vision_feature_select_strategy="default", num_additional_image_tokens=1,
                   chat_template=CHAT_TEMPLATE).save_pretrained(path)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              image_size=32, patch_size=8, projection_dim=32)
    text = LlamaConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                       pad_token_id=fast.pad_token_id, eos_token_id=fast.eos_token_id,
                       bos_token_id=fast.bos_token_id)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=fast.convert_tokens_to_ids("<image>"),
                         vision_feature_select_strategy="default", vision_feature_layer=-1)
    LlavaForConditionalGeneration(config).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def chain_llava_dir(tiny_llava_dir, tmp_path_factory):
    """The tiny LLaVA rewired to answer "hello world" and stop, whatever it is shown.

    A random model never emits EOS, so every caption would be dropped as truncated; with the
    attention and MLP outputs zeroed the residual stream is the token embedding, and the
    embedding/lm_head rows below chain prompt end -> "hello" -> " world" -> EOS. The vision
    tower and processor still run on every image.
    """
    import torch
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    path = tmp_path_factory.mktemp("chain-llava")
    proc = AutoProcessor.from_pretrained(tiny_llava_dir)
    model = LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir)
    tok = proc.tokenizer
    prompt = proc.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": "x"}]}],
                                      tokenize=False, add_generation_prompt=True)
    last = tok(prompt, add_special_tokens=False)["input_ids"][-1]
    chain = [last, *tok("hello world", add_special_tokens=False)["input_ids"], tok.eos_token_id]
    lm = model.model.language_model
    with torch.no_grad():
        for layer in lm.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        emb, head = lm.embed_tokens.weight, model.lm_head.weight
        head.zero_()
        for i, (cur, nxt) in enumerate(itertools.pairwise(chain)):
            emb[cur] = 0
            emb[cur, i] = 1.0
            head[nxt, i] = 10.0
    model.save_pretrained(path)
    proc.save_pretrained(path)
    return str(path)


def _roles(path: str, needed=("vlm",), **extra):
    return build_roles(resolve_roles({"default": RoleConfig(engine="transformers", model=path, **extra)}, needed))


def _ask(text: str, seed: int, size=(64, 48)):
    return [user([image_part(draw(seed, size)), {"type": "text", "text": text}])]


def test_llava_checkpoint_is_routed_to_the_vlm_client(tiny_llava_dir, tmp_path):
    assert is_vision_checkpoint(tiny_llava_dir, {})
    assert not is_vision_checkpoint(tiny_llava_dir, {"vision": False})
    assert not is_vision_checkpoint(str(tmp_path), {})  # no config.json: left to the text engine
    client = TransformersClient.from_config(RoleConfig(engine="transformers", model=tiny_llava_dir))
    assert isinstance(client, TransformersVLMClient)


def test_concurrent_image_requests_are_batched_with_their_pictures(tiny_llava_dir):
    roles = _roles(tiny_llava_dir, max_tokens=6, temperature=0.0)
    client = roles["vlm"].client
    seen: list[tuple[int, int]] = []
    original = client._batcher._run_batch

    def spy(batch):
        seen.append((len(batch), sum(1 for r in batch for m in r.messages if isinstance(m["content"], list))))
        return original(batch)

    client._batcher._run_batch = spy

    async def go():
        try:
            asks = [roles["vlm"].chat(_ask("Describe this image.", i, (40 + 8 * i, 48))) for i in range(5)]
            text_only = roles["vlm"].chat([user("hello world")])
            return await asyncio.gather(*asks, text_only)
        finally:
            await close_roles(roles)

    results = asyncio.run(go())
    assert len(results) == 6
    assert all(0 < r.completion_tokens <= 6 for r in results)
    # the 16 image tokens the processor inserts are part of each image prompt
    assert all(r.prompt_tokens > 16 for r in results[:5]) and results[5].prompt_tokens < 16
    assert max(n for n, _ in seen) > 1, f"requests were not batched: {seen}"


def test_every_picture_reaches_the_vision_tower_and_greedy_is_repeatable(tiny_llava_dir):
    roles = _roles(tiny_llava_dir, max_tokens=8, temperature=0.0)
    client = roles["vlm"].client
    client.load()
    shapes: list[tuple[int, ...]] = []
    tower = client._model.model.vision_tower
    tower.register_forward_hook(lambda _m, args, _out: shapes.append(tuple(args[0].shape)))

    async def go():
        try:
            return await asyncio.gather(*(roles["vlm"].chat(_ask("Describe this image.", s)) for s in (1, 1, 2)))
        finally:
            await close_roles(roles)

    first, again, _other = asyncio.run(go())
    assert first.text == again.text  # same picture, greedy: same caption
    # three pictures went through the CLIP tower, resized by the processor to its 32x32 input
    assert sum(s[0] for s in shapes) == 3 and all(s[1:] == (3, 32, 32) for s in shapes)


def test_undecodable_image_is_a_bad_request(tiny_llava_dir):
    roles = _roles(tiny_llava_dir, max_tokens=4, max_attempts=1)
    broken = {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8="}}

    async def go():
        try:
            await roles["vlm"].chat([user([broken, {"type": "text", "text": "Describe."}])])
        finally:
            await close_roles(roles)

    with pytest.raises(RequestError, match="undecodable image"):
        asyncio.run(go())


def test_caption_translate_runs_on_the_in_process_vlm(chain_llava_dir, tmp_path):
    """The vlm role in-process, the translator on a loopback server: rows with images come out."""
    import datasets
    from image_responders import CAPTIONS_JA

    from synthgen.engine.runner import run_job
    from synthgen.generators.images.samples import write_folder
    from synthgen.loopback_server import LoopbackServer
    from synthgen.spec import JobSpec

    write_folder(tmp_path / "imgs", 3, size=(48, 40))
    with LoopbackServer(lambda body: CAPTIONS_JA["detailed"]) as llm:
        spec = JobSpec(generator="caption-translate", n=3, out=str(tmp_path / "out"),
                       params={"source": str(tmp_path / "imgs"), "styles": ["short", "detailed"],
                               "length_ratio": [0.001, 1000]},
                       roles={"vlm": {"engine": "transformers", "model": chain_llava_dir, "max_tokens": 12,
                                      "temperature": 0.0},
                              "translator": {"base_url": llm.base_url, "model": "M"}})
        result = asyncio.run(run_job(spec))
    assert result.stats.state == "succeeded", result.manifest["failures_by_reason"]
    ds = datasets.load_from_disk(str(tmp_path / "out"))
    assert len(ds) == 3
    assert ds.features["image"] == datasets.Image()
    assert ds[0]["image"].size == (48, 40)
    assert ds[0]["captions"] == {"short": "hello world", "detailed": "hello world"}
    assert result.manifest["usage"]["vlm"]["requests"] >= 6
    assert result.manifest["models"]["vlm"]["engine"] == "transformers"
