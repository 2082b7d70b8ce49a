"""The trainer's side of vllm_mode="server": a `reasonrl vllm-serve` server (vllm_server.py) samples the rounds.

`VLLMServerEngine` has the colocated engine's interface (vllm_engine.VLLMEngine: generate, policy_changed,
push_weights), so the trainer and the rollouts use either alike. It needs no vLLM in the training environment, only
HTTP (requests). At start it waits up to vllm_server_timeout seconds for the server's /health, then checks that the
server's model can be the policy (same vocabulary, a context window for max_prompt_length + max_completion_length).
The policy's weights (LoRA merged, in the server's dtype) are pushed before the first generation and, after each
optimizer step or a resume, before the next one, as one safetensors body to /update_weights.

A server that stops answering is a VLLMServerError naming its URL: the trainer saves the last completed step (the
round in progress changed no weight) and stops, and `--resume` continues once the server is back.
"""

from __future__ import annotations

import time

import torch

from reasonrl.errors import ConfigError, VLLMServerError
from reasonrl.models import unwrap_model
from reasonrl.vllm_engine import completion_tensors, draw_seeds, policy_weights, prompt_lists, sampling_options

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
POLL_SECONDS = 1.0


def server_url(args) -> str:
    """vllm_server_base_url, else http://vllm_server_host:vllm_server_port (TRL's rule)."""
    if args.vllm_server_base_url:
        return args.vllm_server_base_url.rstrip("/")
    return f"http://{args.vllm_server_host}:{args.vllm_server_port}"


class VLLMServerEngine:
    """A `reasonrl vllm-serve` server sampling from the policy's current weights (see the module docstring)."""

    def __init__(self, model, base_url: str, info: dict, timeout: float, pushes: bool = True):
        import requests

        self.model, self.base_url, self.info, self.timeout = model, base_url, info, timeout
        self.dtype = DTYPES[info["dtype"]]
        self.session = requests.Session()
        self.stale = True  # the server loaded its own --model folder: the policy's weights go first
        # the weights' version this process samples from: every process counts the policy's changes alike (they
        # happen in lockstep), the one that `pushes` (rank 0) sends each version, and every /generate waits for it
        self.version, self.pushes = int(info.get("weights_version", 0)), pushes

    @classmethod
    def connect(cls, model, args, *, longest_prompt: int, pushes: bool = True) -> VLLMServerEngine:
        """Wait up to vllm_server_timeout seconds for the server at server_url(args), then check its model.
        `pushes`: this process sends the weights (under torchrun rank 0 alone; the others wait for them)."""
        import requests

        url, timeout = server_url(args), args.vllm_server_timeout
        deadline, reason = time.monotonic() + timeout, "no answer"
        while True:
            try:
                response = requests.get(f"{url}/health", timeout=min(10.0, max(timeout, 1.0)))
                if response.status_code == 200:
                    break
                reason = f"/health answered HTTP {response.status_code}"
            except requests.RequestException as error:
                reason = type(error).__name__
            if time.monotonic() >= deadline:
                raise VLLMServerError(f"no vLLM server answered at {url} within vllm_server_timeout={timeout:g} s "
                                      f"({reason}); start one with `reasonrl vllm-serve --model MODEL_DIR --port "
                                      f"PORT` or point vllm_server_base_url (or vllm_server_host and "
                                      f"vllm_server_port) at it")
            time.sleep(POLL_SECONDS)
        info = _get_json(requests, f"{url}/server_info", timeout)
        engine = cls(model, url, info, timeout, pushes)
        engine.check_model(longest_prompt + args.max_completion_length, longest_prompt)
        return engine

    def check_model(self, longest_sequence: int, longest_prompt: int) -> None:
        """The server's model can hold the policy's weights and the run's longest sequence (its longest prompt, as
        rendered and cut to max_prompt_length, + max_completion_length)."""
        vocab = unwrap_model(self.model).get_input_embeddings().num_embeddings
        if self.info["vocab_size"] != vocab:
            raise ConfigError(f"the vLLM server at {self.base_url} serves {self.info['model']}, whose vocabulary has "
                              f"{self.info['vocab_size']} tokens, but the policy's has {vocab}; start the server "
                              f"with the policy's model (reasonrl vllm-serve --model ...)", "vllm_mode")
        if self.info["max_model_len"] < longest_sequence:
            raise ConfigError(f"the vLLM server at {self.base_url} has max_model_len {self.info['max_model_len']}, "
                              f"below the run's longest prompt ({longest_prompt} tokens) + max_completion_length "
                              f"({longest_sequence - longest_prompt}); restart it with --max-model-len "
                              f"{longest_sequence} or more, or lower max_completion_length or max_prompt_length",
                              "max_completion_length")

    def _post(self, route: str, **kwargs) -> dict:
        """POST to the server; a connection failure or an error status is one VLLMServerError line."""
        import requests

        try:
            # connecting is bounded by vllm_server_timeout; a generation or a reload may take as long as it takes
            response = self.session.post(f"{self.base_url}{route}", timeout=(self.timeout, None), **kwargs)
        except requests.RequestException as error:
            raise VLLMServerError(f"the vLLM server at {self.base_url} stopped answering ({route}: "
                                  f"{type(error).__name__}); restart it (reasonrl vllm-serve --model ... --port "
                                  f"...) and continue the run with --resume") from None
        if response.status_code != 200:
            raise VLLMServerError(f"the vLLM server at {self.base_url} refused {route} (HTTP {response.status_code}: "
                                  f"{_detail(response)}); check that it serves the policy's model")
        return response.json()

    def policy_changed(self) -> None:
        """The policy's weights moved (an optimizer step, a resume): push them before the next generation."""
        self.stale = True

    @torch.no_grad()
    def push_weights(self) -> None:
        """The policy's current weights (merged LoRA, the server's dtype) to the server as one safetensors body;
        the server reloads them in place and resets its prefix cache."""
        from safetensors.torch import save

        self.version += 1
        if self.pushes:
            body = save(dict(policy_weights(self.model, self.dtype)), metadata={"format": "pt"})
            self._post(f"/update_weights?version={self.version}", data=body,
                       headers={"Content-Type": "application/octet-stream"})
        self.stale = False

    def reset_prefix_cache(self) -> None:
        self._post("/reset_prefix_cache")

    @torch.no_grad()
    def generate(self, model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, *, num_generations: int,
                 max_new_tokens: int, eos_token_id: int | list[int], pad_token_id: int, temperature: float = 1.0,
                 top_p: float = 1.0, top_k: int = 0, min_p: float | None = None, repetition_penalty: float = 1.0,
                 suppress_tokens: list[int] | None = None, greedy: bool = False,
                 generator: torch.Generator | None = None, seeds: list[int] | None = None, lean: bool = True):
        """VLLMEngine.generate's contract (rollout.generate's tensors plus vLLM's sampling log-probs), sampled by
        the server: one /generate request for this process's batch, prompt i with seed seeds[i], once the server
        has the policy's current weights."""
        options = sampling_options(num_generations=num_generations, max_new_tokens=max_new_tokens,
                                   eos_token_id=eos_token_id, temperature=temperature, top_p=top_p, top_k=top_k,
                                   min_p=min_p, repetition_penalty=repetition_penalty,
                                   suppress_tokens=suppress_tokens, greedy=greedy)
        if self.stale:
            self.push_weights()
        if seeds is None:
            seeds = draw_seeds(prompt_ids.size(0), generator)
        answer = self._post("/generate", json={"prompts": prompt_lists(prompt_ids, prompt_mask),
                                               "seeds": [int(seed) for seed in seeds], "options": options,
                                               "min_version": self.version, "wait_seconds": self.timeout})
        return completion_tensors(answer["completion_ids"], answer["logprobs"], options["stop_token_ids"],
                                  pad_token_id, prompt_ids.device)


def _get_json(requests, url: str, timeout: float) -> dict:
    try:
        response = requests.get(url, timeout=timeout)
        response.raise_for_status()
        return response.json()
    except (requests.RequestException, ValueError) as error:
        raise VLLMServerError(f"{url} did not answer as `reasonrl vllm-serve` does ({type(error).__name__}); "
                              f"point vllm_server_base_url at a server started with `reasonrl vllm-serve`") from None


def _detail(response) -> str:
    try:
        return str(response.json().get("detail", response.text))[:300]
    except ValueError:
        return response.text[:300]
