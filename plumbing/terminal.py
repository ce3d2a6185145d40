"""Solutions shown on a terminal as they are written (infer.py with questions on its command line).

`Stream` turns one problem's new token ids into new pieces of text (the loop, infer.solution_steps,
calls it as it goes); `Renderer` shows LCE text, code cyan and execution output yellow on a tty,
Markdown fences otherwise; `show_solutions` streams one question, or shows several whole as each
finishes.
"""
import sys

from tokenizer import SPECIAL_RE


class Stream:
    """show(text) with each new piece of one problem's text: the text since the last special token
    is decoded again at each token (a half-decoded UTF-8 character can change)."""

    def __init__(self, tokenizer, show):
        self.tokenizer, self.show, self.ids, self.shown = tokenizer, show, [], ""

    def restart(self, ids, shown):  # the text since the last special token is now `ids`
        self.ids, self.shown = list(ids), shown

    def token(self, token):
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        if text.startswith(self.shown):
            self.show(text[len(self.shown):])
            self.shown = text

    def piece(self, text):
        if self.show:
            self.show(text)
        self.restart([], "")


class Renderer:
    """Show LCE text on a terminal: code cyan and execution yellow on a tty, Markdown fences
    otherwise."""
    OPEN = {"tty": {"<|code|>": "\n\033[36m", "<|execution|>": "\033[33m"},
            "plain": {"<|code|>": "\n```python\n", "<|execution|>": "```output\n"}}

    def __init__(self, out=sys.stdout):
        self.out = out
        self.mode = "tty" if out.isatty() else "plain"
        self.kind = None  # the block being shown

    def __call__(self, text: str):
        for piece in SPECIAL_RE.split(text):
            if piece in ("<|text|>", "<|code|>", "<|execution|>"):
                self.kind = piece
                self.out.write(self.OPEN[self.mode].get(piece, ""))
            elif piece in ("<|endofblock|>", "<|endofmessage|>"):
                if self.kind in ("<|code|>", "<|execution|>"):
                    self.out.write("\033[0m\n" if self.mode == "tty" else "\n```\n")
                elif piece == "<|endofblock|>":
                    self.out.write("\n")
                self.kind = None
            elif not SPECIAL_RE.fullmatch(piece):
                self.out.write(piece)
        self.out.flush()


def show_solutions(solver, model, tokenizer, questions, system, cfg, pool):
    """Questions from the command line: one is streamed as it is decoded; several are each shown
    whole as they finish. solver: infer.solve, or a served model's (serving.served_solver)."""
    show = Renderer()
    if len(questions) == 1:
        solver(model, tokenizer, questions, system, cfg, pool, on_stream=lambda i, text: show(text))
    else:
        def show_result(i, outcome):
            print(f"\n=== question {i + 1}: {outcome['question']}")
            show(outcome["solution"])
        solver(model, tokenizer, questions, system, cfg, pool, on_result=show_result)
    print()
