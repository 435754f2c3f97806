"""The method leaderboard's statistics and decision rule (methods.md section 8, "The do-no-harm comparison"):
`pooling` turns each seed's paired change against the CE control into one pooled change whose interval includes
the spread over training seeds (a hierarchical bootstrap over seeds and samples), and `rule` recommends a method
only when a bias measure improves beyond that interval on most seeds and Full accuracy stays non-inferior, saying
in words, from the numbers, why a method is or is not recommended ("No method helps here" is a valid answer).
Both are pure functions of plain arrays and mappings; reading audits and training runs is the runner's job.
"""
