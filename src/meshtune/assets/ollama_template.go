// Renders an Ollama Modelfile TEMPLATE the way Ollama's server does, with Go's text/template.
//
// meshtune builds this once (needs `go`, Debian's golang-go) to prove that a Modelfile's
// TEMPLATE produces exactly the prompt the model was trained on. It follows the behaviour of
// Ollama's template package (github.com/ollama/ollama, template/template.go):
//   - consecutive messages of one role are merged with a blank line; .System joins all
//     system messages;
//   - a template that uses .Messages is executed once with .System, .Messages, .Response="";
//   - otherwise (a legacy .System/.Prompt/.Response template) it is executed once per
//     exchange, and the last execution stops right after {{ .Response }}; a legacy template
//     without .Response gets one appended.
//
// stdin:  {"template": "...", "conversations": [[{"role": "system", "content": "..."}, ...], ...]}
// stdout: a JSON list with one rendered prompt per conversation, or {"error": "..."} and exit 1.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/template"
	"text/template/parse"
)

// Message has the fields of Ollama's api.Message that templates use.
type Message struct {
	Role      string `json:"role"`
	Content   string `json:"content"`
	Thinking  string `json:"thinking"`
	ToolName  string `json:"tool_name"`
	ToolCalls []any  `json:"tool_calls"`
	Images    []any  `json:"images"`
}

type input struct {
	Template      string      `json:"template"`
	Conversations [][]Message `json:"conversations"`
}

// Ollama's template functions.
var funcs = template.FuncMap{
	"json": func(v any) string {
		b, _ := json.Marshal(v)
		return string(b)
	},
}

// A marker no prompt contains: the last legacy execution is cut where .Response is printed.
const cut = "\x00meshtune-response\x00"

func parseTemplate(src string) (*template.Template, error) {
	return template.New("").Option("missingkey=zero").Funcs(funcs).Parse(src)
}

// names collects the lower-cased field and variable names a template refers to.
func names(n parse.Node, out map[string]bool) {
	switch n := n.(type) {
	case *parse.ListNode:
		if n != nil {
			for _, c := range n.Nodes {
				names(c, out)
			}
		}
	case *parse.ActionNode:
		names(n.Pipe, out)
	case *parse.TemplateNode:
		if n.Pipe != nil {
			names(n.Pipe, out)
		}
	case *parse.IfNode:
		names(&n.BranchNode, out)
	case *parse.RangeNode:
		names(&n.BranchNode, out)
	case *parse.WithNode:
		names(&n.BranchNode, out)
	case *parse.BranchNode:
		names(n.Pipe, out)
		names(n.List, out)
		if n.ElseList != nil {
			names(n.ElseList, out)
		}
	case *parse.PipeNode:
		for _, c := range n.Cmds {
			for _, a := range c.Args {
				names(a, out)
			}
		}
	case *parse.FieldNode:
		for _, id := range n.Ident {
			out[strings.ToLower(id)] = true
		}
	case *parse.VariableNode:
		for _, id := range n.Ident {
			out[strings.ToLower(id)] = true
		}
	}
}

// collate merges consecutive messages of one role and joins the system messages.
func collate(msgs []Message) (string, []*Message) {
	var system []string
	var out []*Message
	for i := range msgs {
		m := msgs[i]
		if m.Role == "system" {
			system = append(system, m.Content)
		}
		if len(out) > 0 && out[len(out)-1].Role == m.Role && m.Role != "tool" {
			out[len(out)-1].Content += "\n\n" + m.Content
		} else {
			out = append(out, &m)
		}
	}
	return strings.Join(system, "\n\n"), out
}

func render(src string, msgs []Message) (string, error) {
	t, err := parseTemplate(src)
	if err != nil {
		return "", err
	}
	vars := map[string]bool{}
	names(t.Tree.Root, vars)
	system, messages := collate(msgs)

	var b bytes.Buffer
	if vars["messages"] {
		err := t.Execute(&b, map[string]any{"System": system, "Messages": messages, "Response": ""})
		return b.String(), err
	}

	if !vars["response"] {
		if t, err = parseTemplate(src + "{{ .Response }}"); err != nil {
			return "", err
		}
	}
	system = ""
	var prompt, response string
	execute := func(resp string) error {
		err := t.Execute(&b, map[string]any{"System": system, "Prompt": prompt, "Response": resp})
		system, prompt, response = "", "", ""
		return err
	}
	for _, m := range messages {
		switch m.Role {
		case "system":
			if prompt != "" || response != "" {
				if err := execute(response); err != nil {
					return "", err
				}
			}
			system = m.Content
		case "user":
			if response != "" {
				if err := execute(response); err != nil {
					return "", err
				}
			}
			prompt = m.Content
		case "assistant":
			response = m.Content
		}
	}
	start := b.Len()
	if err := execute(response + cut); err != nil {
		return "", err
	}
	out := b.String()
	if i := strings.Index(out[start:], cut); i >= 0 {
		out = out[:start+i]
	}
	return out, nil
}

func fail(err error) {
	msg, _ := json.Marshal(map[string]string{"error": err.Error()})
	fmt.Println(string(msg))
	os.Exit(1)
}

func main() {
	var in input
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		fail(err)
	}
	rendered := []string{}
	for _, conv := range in.Conversations {
		s, err := render(in.Template, conv)
		if err != nil {
			fail(err)
		}
		rendered = append(rendered, s)
	}
	out, _ := json.Marshal(rendered)
	fmt.Println(string(out))
}
