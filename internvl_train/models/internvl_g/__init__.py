"""InternVL-G (stage 2): InternVL-C + QLLaMA, its build, the official InternVL-14B layout, greedy captions."""
