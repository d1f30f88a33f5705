//! Chat templates: a model folder's Jinja template (from `tokenizer_config.json` or
//! `chat_template.jinja`) turns (system, history, query) into the prompt and the label into the
//! assistant turn, exactly as the model saw conversations in its own training. Training and
//! evaluation both go through here.

use std::path::Path;

use minijinja::{context, Environment, Error as JinjaError, ErrorKind, Value};

#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("{file}: chat template: {message}")]
    Template { file: String, message: String },
}

/// A compiled chat template with the special tokens it may refer to.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    file: String,
}

/// One turn of a conversation.
pub struct Turn<'a> {
    pub role: &'a str,
    pub content: &'a str,
}

impl ChatTemplate {
    pub fn new(
        source: &str,
        bos_token: &str,
        eos_token: &str,
        file: &str,
    ) -> Result<Self, ChatError> {
        let mut env = Environment::new();
        // HF templates are written for Python's Jinja: `.strip()`, `.startswith()`...
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> Result<Value, JinjaError> {
                Err(JinjaError::new(ErrorKind::InvalidOperation, message))
            },
        );
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| ChatError::Template {
                file: file.to_string(),
                message: e.to_string(),
            })?;
        Ok(Self {
            env,
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
            file: file.to_string(),
        })
    }

    /// Reads the template of a model folder, if it has one: `chat_template.jinja`, or the
    /// `chat_template` of `tokenizer_config.json` (a string, or a list of named templates of which
    /// `default` is used).
    pub fn from_folder(dir: &Path) -> Result<Option<Self>, ChatError> {
        let config_path = dir.join("tokenizer_config.json");
        let config: serde_json::Value = match std::fs::read_to_string(&config_path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| ChatError::Template {
                file: config_path.display().to_string(),
                message: e.to_string(),
            })?,
            Err(_) => serde_json::Value::Null,
        };
        let token = |key: &str| -> String {
            match &config[key] {
                serde_json::Value::String(s) => s.clone(),
                v => v["content"].as_str().unwrap_or_default().to_string(),
            }
        };
        let jinja = dir.join("chat_template.jinja");
        let (source, file) = if let Ok(text) = std::fs::read_to_string(&jinja) {
            (text, jinja.display().to_string())
        } else {
            let source = match &config["chat_template"] {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Array(named) => named
                    .iter()
                    .find(|t| t["name"] == "default")
                    .and_then(|t| t["template"].as_str())
                    .unwrap_or_default()
                    .to_string(),
                _ => String::new(),
            };
            (source, config_path.display().to_string())
        };
        if source.trim().is_empty() {
            return Ok(None);
        }
        Self::new(&source, &token("bos_token"), &token("eos_token"), &file).map(Some)
    }

    /// The conversation rendered; with `add_generation_prompt`, ending where the assistant's
    /// answer begins.
    pub fn render(&self, turns: &[Turn], add_generation_prompt: bool) -> Result<String, ChatError> {
        let messages: Vec<Value> = turns
            .iter()
            .map(|t| context! { role => t.role, content => t.content })
            .collect();
        let template = self.env.get_template("chat").map_err(|e| self.error(e))?;
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .map_err(|e| self.error(e))
    }

    /// The prompt and the assistant's answer as separate texts: the answer is what the whole
    /// conversation adds after the generation prompt.
    pub fn split(&self, turns: &[Turn], answer: &str) -> Result<(String, String), ChatError> {
        let prompt = self.render(turns, true)?;
        let mut all: Vec<Turn> = turns
            .iter()
            .map(|t| Turn {
                role: t.role,
                content: t.content,
            })
            .collect();
        all.push(Turn {
            role: "assistant",
            content: answer,
        });
        let full = self.render(&all, false)?;
        match full.strip_prefix(&prompt) {
            Some(rest) => Ok((prompt, rest.to_string())),
            None => Err(ChatError::Template {
                file: self.file.clone(),
                message: "the rendered conversation does not start with the rendered prompt, so the answer cannot be told apart".into(),
            }),
        }
    }

    fn error(&self, e: JinjaError) -> ChatError {
        ChatError::Template {
            file: self.file.clone(),
            message: e.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ChatML, the format of Qwen2 and SmolLM2 instruct models (written here, not copied).
    const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] | trim + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

    #[test]
    fn renders_chatml_like_python_jinja_and_splits_the_answer() {
        let t = ChatTemplate::new(CHATML, "", "<|im_end|>", "t").unwrap();
        let turns = [
            Turn {
                role: "system",
                content: "Classify.",
            },
            Turn {
                role: "user",
                content: " book a flight ",
            },
        ];
        let (prompt, answer) = t.split(&turns, "book_flight").unwrap();
        // Expected strings produced by Python transformers' apply_chat_template with this template.
        assert_eq!(
            prompt,
            "<|im_start|>system\nClassify.<|im_end|>\n<|im_start|>user\nbook a flight<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(answer, "book_flight<|im_end|>\n");
    }

    #[test]
    fn template_errors_name_the_file() {
        let e = ChatTemplate::new("{% for %}", "", "", "tokenizer_config.json").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("tokenizer_config.json: chat template:"),
            "{e}"
        );
        let t = ChatTemplate::new("{{ raise_exception('roles must alternate') }}", "", "", "x")
            .unwrap();
        let e = t.render(&[], true).unwrap_err().to_string();
        assert!(e.contains("roles must alternate"), "{e}");
    }
}
