// Renders Ollama TEMPLATEs with Go's own text/template, as Ollama executes them: the
// conversation as .Messages of {Role, Content}. Reads a JSON list of
// {"template": ..., "messages": [...]} from stdin and writes each prompt to stdout followed by
// a NUL byte. Used by tests/test_ollama.py when `go` is installed.
package main

import (
	"encoding/json"
	"os"
	"text/template"
)

type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

type Case struct {
	Template string    `json:"template"`
	Messages []Message `json:"messages"`
}

func main() {
	var cases []Case
	if err := json.NewDecoder(os.Stdin).Decode(&cases); err != nil {
		panic(err)
	}
	for _, input := range cases {
		parsed := template.Must(template.New("prompt").Parse(input.Template))
		if err := parsed.Execute(os.Stdout, map[string]any{"Messages": input.Messages}); err != nil {
			panic(err)
		}
		os.Stdout.WriteString("\x00")
	}
}
