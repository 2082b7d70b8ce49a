"""`reasonrl vllm-serve`: one vLLM engine behind a small HTTP server, for use_vllm=true with vllm_mode="server".

The engine is the colocated one's (vllm_engine.start_llm: token ids in, processed log-probs out, in-process, no
tokenizer); the server runs in its own process (often its own virtualenv, as vLLM pins transformers) and the
trainer talks to it over HTTP (vllm_client.py). Routes, TRL's names where TRL has one:

    GET  /health               200 {"status": "ok"} once the engine is loaded
    GET  /server_info          the model folder, dtype, max_model_len, vocabulary size, tied embeddings, and the
                               weights' version (0 as loaded)
    POST /generate             {"prompts": [[token id, ...], ...], "seeds": [int per prompt], "options": {...}}
                               (options: vllm_engine.sampling_options) -> {"completion_ids": [[...]],
                               "logprobs": [[...]]}, n rows per prompt, grouped by prompt; with "min_version": V and
                               "wait_seconds": S it first waits up to S s for weights of version V
    POST /update_weights       body: a safetensors file (bytes) of the policy in its checkpoint's names; reloaded
                               in place as the colocated engine reloads (tied lm_head re-processed), prefix cache
                               reset; ?version=V numbers the weights (else the last version + 1)
    POST /reset_prefix_cache

TRL's server takes weights over NCCL (a GPU collective); a CPU has none, so here they travel as safetensors bytes in
the request body (docs/SCALING.md, "Server mode", says what that costs). One request reaches the engine at a time.
"""

# no `from __future__ import annotations`: FastAPI reads the routes' annotations (classes local to build_app)
import os
import threading

from reasonrl.errors import UsageError


def check_model_folder(path: str) -> None:
    """One error line for a --model that is not a local model folder with safetensors weights."""
    if not os.path.isdir(path):
        raise UsageError(f"--model {path}: no such folder; give a local model folder (config.json and "
                         f"*.safetensors), e.g. one `reasonrl export` or `reasonrl models get` wrote")
    names = os.listdir(path)
    if "config.json" not in names or not any(name.endswith(".safetensors") for name in names):
        raise UsageError(f"--model {path}: not a model folder (it needs config.json and *.safetensors weights); "
                         f"save one with `reasonrl export` or save_pretrained(safe_serialization=True)")


def check_address_free(host: str, port: int) -> None:
    """One error line for a --port that is not a port, or a host:port another program listens on."""
    import socket

    if not 1 <= port <= 65535:
        raise UsageError(f"--port {port} is not a TCP port; give one in 1-65535")
    try:
        with socket.create_server((host, port)):
            pass
    except OSError as error:
        raise UsageError(f"cannot listen on {host}:{port} ({error.strerror or error}); pick another --port or "
                         f"--host") from None


def build_app(llm, info: dict):
    """The FastAPI app serving `llm` (an in-process vllm.LLM); `info` is what /server_info answers."""
    from fastapi import FastAPI, HTTPException, Request
    from pydantic import BaseModel
    from safetensors import SafetensorError
    from safetensors.torch import load as load_safetensors

    from reasonrl.vllm_engine import reload_weights, sample

    app = FastAPI(title="reasonrl vllm-serve")
    engine_lock = threading.Lock()  # the in-process engine runs one call at a time
    # the weights' version: 0 as loaded, then what each /update_weights says. Under torchrun rank 0 alone pushes;
    # every rank's /generate names the version it needs and waits for it (vllm_client.py)
    weights = {"version": 0}
    weights_arrived = threading.Condition()

    class GenerateRequest(BaseModel):
        prompts: list[list[int]]
        seeds: list[int]
        options: dict
        min_version: int = 0  # sample only once the weights are at least this version
        wait_seconds: float = 0.0  # for at most this long

    @app.get("/health")
    async def health():  # on the event loop: answers while a generation runs in the thread pool
        return {"status": "ok"}

    @app.get("/server_info")
    async def server_info():
        return {**info, "weights_version": weights["version"]}

    @app.post("/generate")
    def generate(request: GenerateRequest):
        if len(request.seeds) != len(request.prompts):
            raise HTTPException(422, f"{len(request.prompts)} prompts but {len(request.seeds)} seeds")
        with weights_arrived:
            if not weights_arrived.wait_for(lambda: weights["version"] >= request.min_version, request.wait_seconds):
                raise HTTPException(504, f"weights version {request.min_version} did not arrive within "
                                         f"{request.wait_seconds:g} s (the server has version {weights['version']})")
        try:
            with engine_lock:
                rows, logps = sample(llm, request.prompts, request.seeds, request.options)
        except (KeyError, ValueError, TypeError) as error:  # an option missing or out of range, a too long prompt
            raise HTTPException(400, f"{type(error).__name__}: {str(error)[:300]}") from None
        return {"completion_ids": rows, "logprobs": logps}

    @app.post("/update_weights")
    async def update_weights(request: Request, version: int | None = None):
        body = await request.body()
        try:
            tensors = load_safetensors(body)
        except SafetensorError as error:
            raise HTTPException(400, f"the body is not a safetensors file: {error}") from None

        def reload():
            with engine_lock:
                reload_weights(llm, tensors.items(), info["tie_word_embeddings"])

        import anyio

        try:
            await anyio.to_thread.run_sync(reload)  # off the event loop: /health keeps answering
        except (KeyError, ValueError, RuntimeError, AssertionError) as error:  # names or shapes of another model
            raise HTTPException(400, f"these weights do not fit {info['model']}: {type(error).__name__}: "
                                     f"{str(error)[:200]}") from None
        with weights_arrived:
            weights["version"] = weights["version"] + 1 if version is None else version
            weights_arrived.notify_all()
        return {"status": "ok", "tensors": len(tensors), "version": weights["version"]}

    @app.post("/reset_prefix_cache")
    def reset_prefix_cache():
        with engine_lock:
            llm.reset_prefix_cache()
        return {"status": "ok"}

    return app


def serve(model: str, *, host: str = "127.0.0.1", port: int = 8000, dtype: str = "auto",
          max_model_len: int | None = None, seed: int = 0, vllm_model_impl: str = "vllm",
          gpu_memory_utilization: float = 0.9, log_level: str = "info") -> None:
    """Load `model` into one vLLM engine and serve it until interrupted."""
    from reasonrl.vllm_engine import INSTALL, start_llm, vllm_available

    check_model_folder(model)
    check_address_free(host, port)  # before the engine's start-up, not after it
    if not vllm_available():
        raise UsageError(f"vllm-serve needs vLLM, which is not installed in this environment; {INSTALL}")
    import uvicorn

    llm = start_llm(model, dtype=dtype, seed=seed, max_model_len=max_model_len, model_impl=vllm_model_impl,
                    gpu_memory_utilization=gpu_memory_utilization)
    model_config = llm.llm_engine.model_config
    hf_config = model_config.hf_config
    info = {"model": os.path.abspath(model), "dtype": str(model_config.dtype).removeprefix("torch."),
            "max_model_len": int(model_config.max_model_len), "vocab_size": int(model_config.get_vocab_size()),
            "tie_word_embeddings": bool(getattr(hf_config, "tie_word_embeddings", False))}
    print(f"reasonrl vllm-serve: {info['model']} ({info['dtype']}, max_model_len {info['max_model_len']}) at "
          f"http://{host}:{port}", flush=True)
    uvicorn.run(build_app(llm, info), host=host, port=port, log_level=log_level, workers=1)
