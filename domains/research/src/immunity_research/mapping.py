"""The research domain's mapping table.

Two kinds of native actions:

- **Tools** (``web_search``, ``read_url``, ``read_paper``, ``take_notes``, ``verify_claim``,
  ``write_report``, ``submit_report``, ``run_code``...).
- **Messages** of multi-agent research chats (AutoGen / CaptainAgent group chats, as in the Who&When
  logs), which have no tool: ``tool=None`` and the text decides. Rules with ``tool=""`` match them.
  In order: ``TERMINATE`` or a "final answer" is DONE; a fenced code block to run is EXECUTE; a
  terminal's output (``exitcode: 0 (execution succeeded)``) that carries search results is SEARCH,
  other terminal output is EXECUTE; a line addressed to another expert (``Validation_Expert: please check...``) is DELEGATE; checking
  (``verify``, ``validate``, ``double-check``) is VERIFY; laying out steps is PLAN. The rest falls
  back to core's heuristic (RESPOND).
"""

from __future__ import annotations

from immunity.domain import Rule

#: Text that shows a message is a terminal's output rather than an agent's words.
TERMINAL_OUTPUT = r"^\s*exitcode:\s*-?\d+"

RULES: list[Rule] = [
    # -- tools --------------------------------------------------------------------------------
    Rule(tool=r"(?i)(web_|google_|bing_|ddg_|duckduckgo_|tavily_|serp_|arxiv_|scholar_|wiki(pedia)?_|pubmed_|"
              r"semantic_scholar_)?search(_\w+)?|search|find_papers|query_index|retrieve|retrieve_documents",
         action="SEARCH"),
    Rule(tool=r"(?i)read_url|fetch_url|open_url|browse|browse_page|visit_page|scrape\w*|read_paper|read_pdf|"
              r"get_paper|download_paper|read_document|read_file|get_page|wayback\w*|youtube_transcript",
         action="SEARCH"),
    Rule(tool=r"(?i)take_notes?|save_note|add_note|write_note|update_notes|store_memory", action="EDIT",
         confidence=0.9),
    Rule(tool=r"(?i)verify_claim|fact_check|check_fact|cross_check|check_citation|verify_source|validate\w*",
         action="VERIFY"),
    Rule(tool=r"(?i)submit_report|submit_answer|final_answer|finish|submit|publish_report", action="DONE"),
    Rule(tool=r"(?i)write_report|draft_report|write_section|synthesi[sz]e|summari[sz]e|compose_answer",
         action="RESPOND"),
    Rule(tool=r"(?i)outline|plan|make_plan|think|reflect", action="PLAN"),
    Rule(tool=r"(?i)run_code|execute_code|python|python_repl|code_interpreter|calculator|calculate|compute|bash",
         action="EXECUTE"),
    Rule(tool=r"(?i)ask_expert|delegate\w*|assign_task|ask_agent|transfer_to_\w+", action="DELEGATE"),
    # -- messages of multi-agent chats (tool=None) ----------------------------------------------
    Rule(tool="", action="DONE", when=r"\bTERMINATE\b\s*$|\bFINAL ANSWER\s*:", confidence=0.9),
    Rule(tool="", action="EXECUTE", when=r"```(?:python|py|sh|bash|shell)\b", confidence=0.9),
    Rule(tool="", action="SEARCH",
         when=r"^\s*exitcode:\s*0\b.*?(?:https?://|search result|\btitle\b|\bsnippet\b|\blink\b)", confidence=0.8),
    Rule(tool="", action="EXECUTE", when=TERMINAL_OUTPUT, confidence=0.9),
    Rule(tool="", action="RESPOND", when=r"^There is no code from the last \d+ message", confidence=0.9),
    Rule(tool="", action="DELEGATE",
         when=r"(?m)^\s*(?:\d+\.\s*|-\s*)?\**@?[A-Z]\w*_?Expert\**\s*[:,]\**\s*(?:please|could you|can you|kindly|"
              r"your task|you should|gather|provide|check|verify|calculate|find)", confidence=0.7),
    Rule(tool="", action="VERIFY",
         when=r"\b(?:verif(?:y|ied|ication)|validat(?:e|ed|ion)|double-check|cross-check|fact-check)", confidence=0.6),
    Rule(tool="", action="PLAN",
         when=r"\b(?:plan|step 1|steps to|approach|first,|next steps?)\b|^\s*You are given:", confidence=0.6),
]
