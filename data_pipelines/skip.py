"""SkipSample: a sample the pipelines drop, count by reason and carry on past (both the pair and the SFT path)."""


class SkipSample(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
