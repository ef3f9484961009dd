//! Prompt building (numbered sources within a token budget, recent turns, the
//! question) and citation extraction from answers (`[n]` markers).
use crate::api::Turn;
use crate::config::PromptConfig;
use crate::generate::{ChatMessage, GenParams, Generator, Role, Source};
use crate::types::Hit;

/// Tokens a chat message costs beyond its content (role markers).
const MESSAGE_OVERHEAD: usize = 4;

/// A prompt ready for a generator.
#[derive(Debug, Clone, PartialEq)]
pub struct BuiltPrompt {
    pub messages: Vec<ChatMessage>,
    /// The sources in the prompt, numbered from 1.
    pub sources: Vec<Source>,
    /// `hits[source_hits[i]]` is source `i + 1`.
    pub source_hits: Vec<usize>,
    /// Prompt size in the generator's tokens.
    pub prompt_tokens: usize,
}

fn source_block(n: usize, title: &str, text: &str) -> String {
    if title.is_empty() {
        format!("[{n}]\n{text}\n\n")
    } else {
        format!("[{n}] {title}\n{text}\n\n")
    }
}

/// Builds the prompt: a system message with the instructions and the numbered
/// sources (as many of `hits`, in order, as fit the budget), the recent
/// turns, then the question.
///
/// The source budget is `cfg.context_budget_tokens`, capped by what the
/// generator's context leaves after the instructions, history, question and
/// `params.max_tokens` of answer. Older history is dropped first when even that
/// does not fit.
pub fn build_prompt(
    cfg: &PromptConfig,
    generator: &dyn Generator,
    params: &GenParams,
    history: &[Turn],
    question: &str,
    hits: &[Hit],
) -> BuiltPrompt {
    let count = |s: &str| generator.count_tokens(s) + MESSAGE_OVERHEAD;
    let context = generator.context_tokens();
    let header = format!("{}\n\nSources:\n\n", cfg.system_prompt);
    let fixed = count(&header) + count(question);
    let mut available = context
        .saturating_sub(params.max_tokens)
        .saturating_sub(fixed);

    // History: the last `history_turns` exchanges, newest kept first.
    let max_msgs = cfg.history_turns * 2;
    let recent = &history[history.len().saturating_sub(max_msgs)..];
    let mut kept: Vec<&Turn> = Vec::new();
    // Leave at least half of what remains for sources.
    let mut history_budget = available / 2;
    for t in recent.iter().rev() {
        let c = count(&t.content);
        if c > history_budget {
            break;
        }
        history_budget -= c;
        available -= c;
        kept.push(t);
    }
    kept.reverse();
    // A history that starts with an assistant turn reads oddly: drop it.
    if kept.first().is_some_and(|t| t.role == Role::Assistant) {
        available += count(&kept[0].content);
        kept.remove(0);
    }

    let mut budget = cfg
        .context_budget_tokens
        .map_or(available, |b| b.min(available));
    // A small model follows a short prompt better: few, short sources.
    let compact = context <= cfg.compact_context_tokens;
    let (max_sources, per_source) = if compact {
        (
            cfg.compact_sources.max(1),
            cfg.compact_source_tokens.max(16),
        )
    } else {
        (usize::MAX, usize::MAX)
    };
    let mut system = header;
    let mut sources = Vec::new();
    let mut source_hits = Vec::new();
    for (i, hit) in hits.iter().enumerate() {
        if sources.len() >= max_sources {
            break;
        }
        let n = sources.len() + 1;
        let mut block = source_block(n, &hit.title, &hit.text);
        let mut text = hit.text.clone();
        let mut cost = generator.count_tokens(&block);
        let limit = budget.min(per_source);
        if cost > limit && (sources.is_empty() || compact) {
            // Too long (alone, or for a small model): keep its beginning.
            let chars: Vec<char> = hit.text.chars().collect();
            let mut keep = chars.len() * limit / cost.max(1);
            loop {
                text = chars[..keep].iter().collect();
                block = source_block(n, &hit.title, &text);
                cost = generator.count_tokens(&block);
                if cost <= limit || keep == 0 {
                    break;
                }
                keep = keep * 9 / 10;
            }
            if keep == 0 {
                continue;
            }
        }
        if cost > budget {
            continue;
        }
        budget -= cost;
        system.push_str(&block);
        sources.push(Source {
            n,
            chunk_id: hit.chunk_id.clone(),
            title: hit.title.clone(),
            text,
        });
        source_hits.push(i);
    }
    if sources.is_empty() {
        system = format!(
            "{}\n\nNo sources were found for this question.",
            cfg.system_prompt
        );
    }
    let mut system = system.trim_end().to_string();
    let mut user = question.to_string();
    if compact && !sources.is_empty() {
        // Sources in the user turn, the question restated right after them.
        let blocks = system.split_once("\n\nSources:\n\n").map_or("", |x| x.1);
        user = format!(
            "Sources:\n\n{blocks}\n\nQuestion: {question}\n\
Answer the question in one or two sentences using only the sources above, \
and put the source number in square brackets after each sentence, like [1]."
        );
        system = cfg.system_prompt.clone();
    }

    let mut messages = vec![ChatMessage {
        role: Role::System,
        content: system,
    }];
    for t in kept {
        messages.push(ChatMessage {
            role: t.role,
            content: t.content.clone(),
        });
    }
    messages.push(ChatMessage {
        role: Role::User,
        content: user,
    });
    let prompt_tokens = messages.iter().map(|m| count(&m.content)).sum();
    BuiltPrompt {
        messages,
        sources,
        source_hits,
        prompt_tokens,
    }
}

/// The source numbers `answer` cites with `[n]` markers (also `[1, 2]` and
/// `[1][2]`), in order of first appearance, limited to `1..=n_sources`.
pub fn cited_numbers(answer: &str, n_sources: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let mut rest = answer;
    while let Some(open) = rest.find('[') {
        let after = &rest[open + 1..];
        let Some(close) = after.find(']') else { break };
        let inner = &after[..close];
        let nums: Option<Vec<usize>> = inner
            .split(',')
            .map(|p| p.trim().parse::<usize>().ok())
            .collect();
        if let Some(nums) = nums {
            for n in nums {
                if (1..=n_sources).contains(&n) && !out.contains(&n) {
                    out.push(n);
                }
            }
            rest = &after[close + 1..];
        } else {
            rest = after;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_markers() {
        assert_eq!(cited_numbers("a [2] b [1, 3][2] [x] [9]", 3), vec![2, 1, 3]);
        assert_eq!(cited_numbers("none here [", 3), Vec::<usize>::new());
        assert_eq!(cited_numbers("[[1]]", 2), vec![1]);
    }
}
